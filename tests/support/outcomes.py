"""A start command and the engine's accepted outcome of a command, as the gateway's unit
tests exchange them."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.commands import Command, StartWorkflow, StartWorkflowPayload
from schemas.common import ExecutionStatus
from schemas.outcomes import CommandOutcome

DECIDED = datetime(2026, 1, 1, tzinfo=UTC)


def start_command(command_id: str = "c-1", execution_id: str = "e-1") -> StartWorkflow:
    return StartWorkflow(
        command_id=command_id,
        execution_id=execution_id,
        issued_at=DECIDED,
        user_id="alice",
        payload=StartWorkflowPayload(workflow_name="wf", input={}),
    )


def accepted(command: Command, run_id: str = "r-1") -> CommandOutcome:
    """The outcome of `command` taken in: the run `run_id` is RUNNING at seq 1."""
    return CommandOutcome(
        command_id=command.command_id,
        command_type=command.type,
        execution_id=command.execution_id,
        accepted=True,
        seq=1,
        run_id=run_id,
        status=ExecutionStatus.RUNNING,
        decided_at=DECIDED,
    )
