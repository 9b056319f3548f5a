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

from pydantic import TypeAdapter, ValidationError
from pymongo.asynchronous.database import AsyncDatabase

from schemas.common import Identifier
from services.api.auth import Caller
from services.api.errors import not_found
from services.api.run_list import PageTokens, RunFilter
from services.api.run_reader import RunReader
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
        self, db: AsyncDatabase[Document], user_id: str, tokens: PageTokens | None = None
    ) -> None:
        super().__init__(db, tokens)
        self._user_id = user_id

    def _visible(self, run: Document) -> bool:
        return run.get("user_id") == self._user_id

    async def list_runs(
        self, flt: RunFilter, page_size: int, token: str | None
    ) -> tuple[list[Document], str | None]:
        if flt.user_id is not None and flt.user_id != self._user_id:
            return [], None
        return await super().list_runs(
            dataclasses.replace(flt, user_id=self._user_id), page_size, token
        )


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
