"""Tasks: what the engine (and the API, for queries and updates) asks workers to do,
published on `workflows.tasks`. See docs/worker-protocol.md."""

from __future__ import annotations

from typing import Literal

from pydantic import JsonValue

from schemas.common import FrozenModel

TaskKind = Literal["run", "signal", "stop", "query", "update"]


class WorkflowTask(FrozenModel):
    task_id: str
    """Unique per task: `{execution_id}:{seq}:{index}` of the event that caused it, or
    `query:{request_id}` / `update:{request_id}`."""
    kind: TaskKind
    """run: advance the run (replay to >= `seq`, run the code on); signal: an alias of run
    kept for subscribers (a signal was appended); stop: the run closed without the code,
    drop it; query / update: answer on workflows.replies (`request_id`)."""
    execution_id: str
    run_id: str
    seq: int
    """run/signal/stop: the seq of the event that caused the task; query/update: the
    execution's last seq the API knew (0 if unknown): replay at least that far."""
    workflow_name: str
    attempt: int = 1
    input: JsonValue = None
    signal_name: str | None = None
    deployment_name: str | None = None
    """Routes the task: the workers of deployment D (None = `default`) take it."""
    request_id: str | None = None
    """query / update: the correlation id the reply carries."""
    name: str | None = None
    """query / update: the handler's name."""
    user_id: str | None = None
    """query / update: who asked."""
    timestamp_ns: int | None = None
    """run/signal/stop: the time of the event that caused the task. With `seq` 1 (an
    execution's first commit holds only its STARTED) a worker has the whole history in the
    task and starts the run without reading it."""
