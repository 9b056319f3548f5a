"""Request-scoped access to what `build_app` wires: callers, readers, the gateway.

`Authed` is where access control happens for every route: the bearer key names the
caller (401 otherwise), and in separate-users mode an `execution_id` or `run_id` in the
path, and every query parameter the route declares with `access.execution_query`, must
name one of the caller's runs (404 otherwise, like an unknown id). `Reader`
is narrowed to the caller's runs in that mode too, so lists never show others' runs.
The read routes (routes_runs) take `Identified` + `RunsReader` instead: the narrowed
reader answers another user's run with the same 404, without a second read of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute
from pymongo.asynchronous.database import AsyncDatabase

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
from services.common.settings import ApiSettings

Document = dict[str, Any]


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


async def _caller(request: Request, found: Annotated[Caller, Depends(_identified)]) -> Caller:
    access: AccessPolicy = request.app.state.access
    if access.separate:
        await _check_path_owner(request, access, found)
    return found


async def _check_path_owner(request: Request, access: AccessPolicy, caller: Caller) -> None:
    reader: RunReader = request.app.state.reader
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


def _reader_for(request: Request, who: Caller) -> RunReader:
    wiring: Wiring = request.app.state.wiring
    return wiring.reader_for(who)


async def _reader(request: Request, who: Annotated[Caller, Depends(_caller)]) -> RunReader:
    return _reader_for(request, who)


async def _runs_reader(request: Request, who: Annotated[Caller, Depends(_identified)]) -> RunReader:
    # The read routes need no path check: this reader already shows another user's run
    # as no run at all (the same 404), and checking first would read the run twice.
    return _reader_for(request, who)


async def _gateway(request: Request) -> CommandGateway:
    gateway: CommandGateway = request.app.state.gateway
    return gateway


async def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def _fanout(request: Request) -> EventFanout:
    fanout: EventFanout = request.app.state.fanout
    return fanout


async def _access(request: Request) -> AccessPolicy:
    access: AccessPolicy = request.app.state.access
    return access


async def _db(request: Request) -> AsyncDatabase[Document]:
    db: AsyncDatabase[Document] = request.app.state.db
    return db


Authed = Annotated[Caller, Depends(_caller)]
Reader = Annotated[RunReader, Depends(_reader)]
Identified = Annotated[Caller, Depends(_identified)]
"""The caller (401 otherwise), without the path check: only with `RunsReader`."""
RunsReader = Annotated[RunReader, Depends(_runs_reader)]
"""What the read routes read through: `Reader`, minus the path check."""
Gateway = Annotated[CommandGateway, Depends(_gateway)]
Settings = Annotated[ApiSettings, Depends(_settings)]
Fanout = Annotated[EventFanout, Depends(_fanout)]
Access = Annotated[AccessPolicy, Depends(_access)]
Database = Annotated[AsyncDatabase[Document], Depends(_db)]


async def _all_runs(request: Request) -> RunReader:
    """The unscoped reader: for checks that must see other users' runs (id taken …)."""
    reader: RunReader = request.app.state.reader
    return reader


AllRuns = Annotated[RunReader, Depends(_all_runs)]


@dataclass(frozen=True, slots=True)
class Wiring:
    """Everything `build_app` wires, as one dependency: the command routes are hot, and
    each FastAPI dependency costs a resolution per request."""

    settings: ApiSettings
    gateway: CommandGateway
    fanout: EventFanout
    access: AccessPolicy
    all_runs: RunReader
    """Unscoped: for checks that must see other users' runs (an execution id taken …)."""
    db: AsyncDatabase[Document]

    def reader_for(self, caller: Caller) -> RunReader:
        """What `Reader` gives: narrowed to the caller's runs in separate-users mode."""
        if self.access.separate:
            runs = self.all_runs
            return OwnedRunReader(runs.models, runs.commits, caller.user_id, runs.tokens)
        return self.all_runs


async def _wiring(request: Request) -> Wiring:
    wiring: Wiring = request.app.state.wiring
    return wiring


Wired = Annotated[Wiring, Depends(_wiring)]
