"""Replies: what a worker answers to a query or update task, on `workflows.replies`.

Every API instance reads the topic (as it reads outcomes) and hands the reply to the
request waiting for its `request_id`. Keyed by execution id. See docs/worker-protocol.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from schemas.common import FrozenModel

ReplyCode = Literal[
    "unknown_query", "unknown_update", "update_rejected", "query_failed", "update_failed"
]
"""unknown_query / unknown_update: no handler of that name (`known_names` lists them);
update_rejected: the validator refused (nothing recorded); query_failed / update_failed:
the handler raised."""


class ReplyError(FrozenModel):
    code: ReplyCode
    message: str
    known_names: list[str] = Field(default_factory=list)
    """For unknown_query / unknown_update: the handlers the workflow has."""


class WorkerReply(FrozenModel):
    request_id: str
    execution_id: str
    kind: Literal["query", "update"]
    ok: bool
    result: JsonValue = None
    error: ReplyError | None = None
    command_id: str | None = None
    """update: the CompleteWorkflowTask (`update:{request_id}`) that records it; the API
    answers once the engine accepted that command."""
    worker_id: str | None = None


def parse_reply(raw: bytes | str) -> WorkerReply:
    """Parse one record of `workflows.replies`; raises pydantic.ValidationError."""
    return WorkerReply.model_validate_json(raw)
