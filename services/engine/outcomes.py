"""What a decided command answers (pure): its `CommandOutcome` and the commands it
sends to other executions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.commands import Command
from schemas.commits import Commit, RejectedCommand
from schemas.events import Event
from schemas.outcomes import CommandOutcome, RejectionCode
from services.common.clock import ns_to_datetime
from services.engine.derived_commands import derived_commands, start_failed_report
from services.engine.domain import Context, ExecutionState, Rejected, successor_commands


def _outcome(command: Command, decided_at: datetime, **fields: Any) -> CommandOutcome:
    return CommandOutcome(
        command_id=command.command_id,
        command_type=command.type,
        execution_id=command.execution_id,
        decided_at=decided_at,
        **fields,
    )


def accepted(
    command: Command, commit: Commit, state: ExecutionState, decided_at: datetime
) -> CommandOutcome:
    """The command went in as `commit`, leaving the execution in `state`; `decided_at` is
    the commit's `committed_at` when it was just decided (one clock conversion per
    command, not one per record that carries the time)."""
    # One per accepted command, of validated values: not validated again.
    return CommandOutcome.trusted(
        command_id=command.command_id,
        command_type=command.type,
        execution_id=command.execution_id,
        accepted=True,
        code=None,
        message=None,
        seq=commit.seq,
        run_id=state.run_id,
        status=state.status,
        decided_at=decided_at,
    )


def rejected(command: Command, rejection: Rejected, now_ns: int) -> CommandOutcome:
    """The domain refused the command."""
    return _outcome(
        command,
        ns_to_datetime(now_ns),
        accepted=False,
        code=rejection.code,
        message=rejection.message,
    )


def stored_rejection(command: Command, rejected: RejectedCommand, commit: Commit) -> CommandOutcome:
    """A rejection recorded in `commit` (the answer to a redelivered rejected command)."""
    return _outcome(
        command, commit.committed_at, accepted=False, code=rejected.code, message=rejected.message
    )


def not_reapplied(command: Command, now_ns: int) -> CommandOutcome:
    """A command redelivered after its batch was processed, with no stored trace."""
    return _outcome(
        command,
        ns_to_datetime(now_ns),
        accepted=False,
        code=RejectionCode.INVALID_TRANSITION,
        message="command was redelivered after being processed; not applied again",
    )


def follow_ups(events: list[Event], ctx: Context, state: ExecutionState) -> list[Command]:
    """Commands a commit sends to other executions (all with ids derived from its events)."""
    return successor_commands(events, ctx, state) + derived_commands(events, ctx, state)


def after_rejection(command: Command, rejection: Rejected) -> list[Command]:
    """A child's refused start still reaches its parent (derived from the start's id)."""
    if command.type != "StartWorkflow":
        return []
    report = start_failed_report(command, rejection)
    return [] if report is None else [report]
