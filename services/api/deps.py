"""Request-scoped access to what `build_app` wires, as FastAPI dependencies named for
what they check or give.

- `Identified`: the caller named by the bearer key (401 otherwise). Nothing more.
- `Authorized`: `Identified`, and in separate-users mode every execution the request
  names (an `execution_id` or `run_id` in the path, every query parameter declared with
  `access.execution_query`) must be one of the caller's (404 otherwise, like an unknown
  id). Every route that names an execution takes it.
- `CallerReader`: the run reader as the caller sees it: narrowed to the caller's runs in
  separate-users mode, so lists never show others' runs and another user's run reads as
  no run (the same 404). The read routes (routes_runs) take it with `Identified` only:
  checking first would read the run twice.
- `Wired`: everything `build_app` wired, as one dependency (the command routes are hot,
  and each dependency costs a resolution per request); `Settings`, `Fanout`, `Access` and
  `Catalogue` for routes that need one thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute

from services.api.access import (
    ABSENT_FILTER_VALUES,
    AccessPolicy,
    OwnedRunReader,
    execution_query_params,
)
from services.api.auth import ApiKeys, Caller
from services.api.errors import not_found
from services.api.event_fanout import EventFanout
from services.api.gateway import CommandGateway
from services.api.run_reader import RunReader
from services.common.catalogue_store import CatalogueStore
from services.common.schedule_store import MongoScheduleStore
from services.common.settings import ApiSettings

Document = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Wiring:
    """Everything `build_app` wires."""

    settings: ApiSettings
    gateway: CommandGateway
    fanout: EventFanout
    access: AccessPolicy
    all_runs: RunReader
    """Unscoped: for checks that must see other users' runs (an execution id taken …)."""
    catalogue: CatalogueStore
    schedules: MongoScheduleStore

    def reader_for(self, caller: Caller) -> RunReader:
        """`CallerReader`: narrowed to the caller's runs in separate-users mode."""
        if self.access.separate:
            runs = self.all_runs
            return OwnedRunReader(
                runs.models, runs.commits, caller.user_id, runs.tokens, runs.answered
            )
        return self.all_runs


def _wiring(request: Request) -> Wiring:
    wiring: Wiring = request.app.state.wiring
    return wiring


async def _identified(request: Request) -> Caller:
    keys: ApiKeys = request.app.state.api_keys
    found = keys.caller(request.headers.get("authorization"))
    if found is None:
        raise HTTPException(
            status_code=401,
            detail="missing or unknown API key (send Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


async def _authorized(request: Request, who: Annotated[Caller, Depends(_identified)]) -> Caller:
    wiring = _wiring(request)
    if wiring.access.separate:
        await _check_named_executions(request, wiring.access, wiring.all_runs, who)
    return who


async def _check_named_executions(
    request: Request, access: AccessPolicy, reader: RunReader, caller: Caller
) -> None:
    params = request.path_params
    execution_id = params.get("execution_id")
    if execution_id is not None and not access.may_see(
        caller, await reader.execution(execution_id)
    ):
        raise not_found("execution", execution_id)
    run_id = params.get("run_id")
    if run_id is not None and not access.may_see(caller, await reader.run(run_id)):
        raise not_found("run", run_id)
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        for name in execution_query_params(route):
            for value in dict.fromkeys(request.query_params.getlist(name)):
                if value in ABSENT_FILTER_VALUES:
                    continue
                if not access.may_see(caller, await reader.execution(value)):
                    raise not_found("execution", value)


async def _caller_reader(
    request: Request, who: Annotated[Caller, Depends(_identified)]
) -> RunReader:
    return _wiring(request).reader_for(who)


async def _wired(request: Request) -> Wiring:
    return _wiring(request)


async def _settings(request: Request) -> ApiSettings:
    return _wiring(request).settings


async def _fanout(request: Request) -> EventFanout:
    return _wiring(request).fanout


async def _access(request: Request) -> AccessPolicy:
    return _wiring(request).access


async def _catalogue(request: Request) -> CatalogueStore:
    return _wiring(request).catalogue


Identified = Annotated[Caller, Depends(_identified)]
Authorized = Annotated[Caller, Depends(_authorized)]
CallerReader = Annotated[RunReader, Depends(_caller_reader)]
Wired = Annotated[Wiring, Depends(_wired)]
Settings = Annotated[ApiSettings, Depends(_settings)]
Fanout = Annotated[EventFanout, Depends(_fanout)]
Access = Annotated[AccessPolicy, Depends(_access)]
Catalogue = Annotated[CatalogueStore, Depends(_catalogue)]
