"""Tasks: what the engine asks workers to do, published on `workflows.tasks`."""

from __future__ import annotations

from typing import Literal

from pydantic import JsonValue

from schemas.common import FrozenModel


class WorkflowTask(FrozenModel):
    task_id: str
    """Unique per task: `{execution_id}:{seq}:{index}` of the event that caused it."""
    kind: Literal["run", "signal", "stop"]
    """run: (re)start the workflow code; signal: deliver a signal; stop: abandon the run."""
    execution_id: str
    run_id: str
    seq: int
    workflow_name: str
    attempt: int = 1
    input: JsonValue = None
    signal_name: str | None = None
    deployment_name: str | None = None
