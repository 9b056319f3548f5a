"""The event store's unit of write: one commit per accepted command.

A commit is one MongoDB document, so it is atomic without transactions. Its `_id` is
`{execution_id}:{seq:012d}` (zero-padded so `_id` order is stream order); a second
unique index on `command_id` makes appends idempotent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from schemas.common import FrozenModel
from schemas.events import Event
from schemas.outcomes import RejectionCode


class SourcePosition(FrozenModel):
    """Where the command came from in `workflows.commands`."""

    partition: int
    offset: int


class RejectedCommand(FrozenModel):
    """A command of this execution rejected in the same batch, before this commit.

    Kept so that a redelivery after a crash answers it the same way instead of deciding
    again against a later state.
    """

    command_id: str
    command_type: str
    offset: int
    code: RejectionCode
    message: str


class Commit(FrozenModel):
    execution_id: str
    seq: int = Field(ge=1)
    command_id: str
    command_type: str
    run_id: str
    events: list[Event]
    committed_at: datetime
    source: SourcePosition | None = None
    rejected: list[RejectedCommand] = Field(default_factory=list)
    state: dict[str, Any]
    """The execution's state after this commit (a snapshot: loading needs no fold)."""

    @property
    def doc_id(self) -> str:
        return commit_id(self.execution_id, self.seq)


def commit_id(execution_id: str, seq: int) -> str:
    return f"{execution_id}:{seq:012d}"
