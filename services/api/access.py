"""Who may read and command which runs (see docs/api-gateway.md, "Access").

`RUNSTORE_API_ACCESS_MODE=shared` (default): every authenticated caller reads and
commands every run, as in one Mistral workspace; `user_id` records who started or
signalled what, and `list_runs(user_id="current")` filters by it.

`RUNSTORE_API_ACCESS_MODE=separate`: a run belongs to the user that started it. A caller
sees only its own runs (lists are narrowed to them; another user's run or execution answers
404, exactly like an unknown one, so ids do not leak) and may command only executions
whose latest run it started. Runs started without a user (timers, producers that send
none) are visible to no HTTP caller in this mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import Query
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from schemas.common import Identifier
from services.api.answered import AnsweredRecently
from services.api.auth import Caller
from services.api.errors import not_found
from services.api.page_tokens import PageTokens
from services.api.run_reader import RunReader
from services.common.commit_log import CommitLog
from services.common.readmodels.reader import ReadModelReader
from services.common.readmodels.run_filter import RunFilter
from services.common.settings import AccessMode

Document = dict[str, Any]

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


class AccessPolicy:
    def __init__(self, mode: AccessMode) -> None:
        self.mode = mode

    @property
    def separate(self) -> bool:
        return self.mode is AccessMode.SEPARATE

    def may_see(self, caller: Caller, run: Document | None) -> bool:
        """Whether `caller` may read (and command) the run; False for no run."""
        if run is None:
            return False
        return not self.separate or run.get("user_id") == caller.user_id


class OwnedRunReader(RunReader):
    """A RunReader that shows one user only the runs that user started."""

    def __init__(
        self,
        models: ReadModelReader,
        commits: CommitLog,
        user_id: str,
        tokens: PageTokens | None = None,
        answered: AnsweredRecently | None = None,
    ) -> None:
        super().__init__(models, commits, tokens, answered)
        self._user_id = user_id

    def _visible(self, run: Document) -> bool:
        return run.get("user_id") == self._user_id

    async def list_runs(
        self, flt: RunFilter, page_size: int, token: str | None
    ) -> tuple[list[Document], str | None]:
        if flt.user_id is not None and flt.user_id != self._user_id:
            return [], None
        return await super().list_runs(self._own(flt), page_size, token)

    async def rows(self, flt: RunFilter, limit: int) -> list[Document]:
        if flt.user_id is not None and flt.user_id != self._user_id:
            return []
        return await super().rows(self._own(flt), limit)

    def _own(self, flt: RunFilter) -> RunFilter:
        return dataclasses.replace(flt, user_id=self._user_id)


NAMES_EXECUTION = "x-names-execution"
"""OpenAPI extension on a query parameter whose value is an execution id: in separate mode
`deps.Authorized` checks that every such value names one of the caller's executions."""

ABSENT_FILTER_VALUES = frozenset({"*", ""})
"""What the SDK sends for a stream filter it leaves out; such a value names nothing."""


def execution_query(**options: Any) -> Any:
    """`Query(...)` for a parameter that names an execution. Declaring it this way is what
    puts it under the owner check: the check reads the route's parameters, not a list."""
    return Query(json_schema_extra={NAMES_EXECUTION: True}, **options)


_EXECUTION_PARAMS_ATTR = "runstore_execution_query_params"


def execution_query_params(route: APIRoute) -> tuple[str, ...]:
    """The query parameters of `route` (its dependencies included) declared with
    `execution_query`, by their names on the wire (worked out once, kept on the route)."""
    known: tuple[str, ...] | None = getattr(route, _EXECUTION_PARAMS_ATTR, None)
    if known is None:
        known = tuple(dict.fromkeys(_marked_query_params(route.dependant)))
        setattr(route, _EXECUTION_PARAMS_ATTR, known)
    return known


def _marked_query_params(dependant: Dependant) -> list[str]:
    found = [
        p.alias
        for p in dependant.query_params
        if isinstance(extra := p.field_info.json_schema_extra, dict) and extra.get(NAMES_EXECUTION)
    ]
    for sub in dependant.dependencies:
        found += _marked_query_params(sub)
    return found


def known_execution_id(execution_id: str) -> str:
    """The id, or 404: an id no execution can have (it could not be created) is unknown."""
    try:
        return _IDENTIFIER.validate_python(execution_id)
    except ValidationError as exc:
        raise not_found("execution", execution_id) from exc


async def existing_execution(reader: RunReader, execution_id: str) -> Document:
    """The execution's latest run as `reader` sees it, or 404."""
    run = await reader.execution(known_execution_id(execution_id))
    if run is None:
        raise not_found("execution", execution_id)
    return run
