"""Outcomes: what became of each command, published on `workflows.outcomes`.

The HTTP gateway waits for the outcome of the command it published, so that its
answer tells the truth (201-style success, 404, 409 …). Producers on Kafka may read
them too. One outcome per command id; a redelivered command yields the same outcome.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from schemas.common import ExecutionStatus, FrozenModel


class RejectionCode(StrEnum):
    """Stable, machine-readable reasons the engine refuses a valid command."""

    EXECUTION_NOT_FOUND = "execution_not_found"
    EXECUTION_ALREADY_RUNNING = "execution_already_running"
    EXECUTION_ALREADY_CLOSED = "execution_already_closed"
    EXECUTION_ID_REUSE_REJECTED = "execution_id_reuse_rejected"
    RUN_NOT_ACTIVE = "run_not_active"
    INVALID_RESET_POINT = "invalid_reset_point"
    INVALID_TRANSITION = "invalid_transition"
    STALE_WORKFLOW_TASK = "stale_workflow_task"
    """CompleteWorkflowTask from a replay older than the run's last accepted workflow task."""
    INVALID_WORKFLOW_TASK = "invalid_workflow_task"
    """A step that makes no sense in the run's state; the message names the step."""
    TIMER_NOT_PENDING = "timer_not_pending"
    """FireTimer of a timer that is not pending (fired, canceled, never started)."""
    CHILD_NOT_FOUND = "child_not_found"
    """RecordChildWorkflow for a child the parent's run did not initiate (or already closed)."""


class CommandOutcome(FrozenModel):
    command_id: str
    command_type: str
    execution_id: str
    accepted: bool
    code: RejectionCode | None = None
    message: str | None = None
    seq: int | None = None
    """The commit the command produced (accepted only)."""
    run_id: str | None = None
    status: ExecutionStatus | None = None
    """The execution's status after the command (accepted only)."""
    decided_at: datetime
