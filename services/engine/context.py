"""The `Context` a command is decided in (pure): its clock reading and the ids it may
need, all derived from the command id so that a decision taken again picks the same
(with the command id's time prefix when it has one: services/common/ids.py)."""

from __future__ import annotations

from schemas.commands import Command
from schemas.events import Event
from services.common.ids import derived_id, time_ordered_near
from services.engine.domain import Context

# Which ids each command type can need; deriving them costs a hash each.
_NEEDS_RUN_ID = frozenset({"StartWorkflow", "ResetExecution", "ContinueAsNew"})


def _continues_as_new(command: Command) -> bool:
    if command.type == "ContinueAsNew":
        return True
    if command.type != "CompleteWorkflowTask" or not command.payload.steps:
        return False
    return command.payload.steps[-1].kind == "continue_as_new"


def context_for(command: Command, now_ns: int, history: tuple[Event, ...] = ()) -> Context:
    """`history`: the latest run's events, which only a reset reads."""
    cid = command.command_id
    successor = _continues_as_new(command)
    needs_run_id = command.type in _NEEDS_RUN_ID
    # The command id's time prefix, when it is one made near the command's issue time
    # (deterministic: both are in the command); only commands that derive ids need it.
    t = (
        time_ordered_near(cid, int(command.issued_at.timestamp() * 1000))
        if needs_run_id or successor
        else ""
    )
    return Context(
        now_ns=now_ns,
        new_run_id=derived_id(cid, "run", time_of=t) if needs_run_id else "",
        new_execution_id=derived_id(cid, "execution", time_of=t) if successor else "",
        successor_run_id=derived_id(cid, "successor-run", time_of=t) if successor else "",
        history=history,
    )
