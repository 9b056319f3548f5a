"""Commands a commit sends to OTHER executions (pure): a child's start, reports to a
parent, parent-close policies. Every command id derives from an event id, so a
re-published commit applies them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from schemas.commands import (
    CancelExecution,
    ChildReportPayload,
    Command,
    ReasonPayload,
    RecordChildWorkflow,
    StartWorkflow,
    StartWorkflowPayload,
    TerminateExecution,
)
from schemas.common import ExecutionStatus, Failure, ParentClosePolicy
from schemas.events import (
    CLOSING_EVENT_TYPES,
    STATUS_AFTER,
    ChildInitiated,
    Event,
    EventType,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    closes_run,
)
from services.common.clock import ns_to_datetime

if TYPE_CHECKING:  # not at run time: the domain imports the worker protocol's modules
    from services.engine.domain import Context, ExecutionState, Rejected


# The only event types the loop below derives commands from.
_MAY_DERIVE = CLOSING_EVENT_TYPES | {
    EventType.CHILD_WORKFLOW_INITIATED,
    EventType.WORKFLOW_EXECUTION_STARTED,
}


def derived_commands(events: Sequence[Event], ctx: Context, state: ExecutionState) -> list[Command]:
    """Commands a commit's events send to OTHER executions, besides a continue-as-new
    successor (`domain.successor_commands`): a child's StartWorkflow, this execution's
    start and close reported to its parent, and the parent-close policy of open children.

    `state` is the execution's state right after the commit. Command ids derive from
    event ids: a re-published commit derives the same commands.
    """
    if not any(e.type in _MAY_DERIVE for e in events):
        return []  # most commits (signals, reports, timers …): nothing to derive
    commands: list[Command] = []
    # Converted where a command is derived: a root's start (most commits of this loop, one
    # per HTTP start) derives none.
    now_ns = ctx.now_ns
    reset = any(e.type is EventType.WORKFLOW_RUN_RESET for e in events)
    for event in events:
        if isinstance(event, ChildInitiated):
            commands.append(_child_start(event, state, ns_to_datetime(now_ns)))
        elif isinstance(event, ExecutionStarted):
            a = event.attributes
            # Only a child's own first run reports (not a reset's run, not a start-again).
            if (
                a.parent_run_id is not None
                and event.parent_execution_id is not None
                and event.event_number == 1
            ):
                commands.append(
                    _to_parent(
                        event,
                        event.parent_execution_id,
                        ChildReportPayload(
                            run_id=a.parent_run_id,
                            child_execution_id=event.execution_id,
                            child_run_id=event.run_id,
                            stage="started",
                        ),
                        ns_to_datetime(now_ns),
                    )
                )
        elif closes_run(event) and not reset:
            # A reset's TERMINATED ends a run another one replaces: not a close the parent
            # or the children should see (documented in docs/domain.md).
            commands.extend(_closing_commands(event, state, ns_to_datetime(now_ns)))
    return commands


def _child_start(
    event: ChildInitiated, state: ExecutionState, issued_at: datetime
) -> StartWorkflow:
    a = event.attributes
    return StartWorkflow(
        command_id=f"{event.event_id}:child",
        execution_id=a.child_execution_id,
        issued_at=issued_at,
        user_id=state.started.user_id,
        payload=StartWorkflowPayload(
            workflow_name=a.workflow_name,
            input=a.input.value,
            deployment_name=a.deployment_name,
            execution_timeout_seconds=a.execution_timeout_seconds,
            retry_policy=a.retry_policy,
            parent_execution_id=event.execution_id,
            parent_run_id=event.run_id,
            root_execution_id=event.root_execution_id,
            parent_close_policy=a.parent_close_policy,
            display_name=a.display_name,
        ),
    )


def _closing_commands(event: Event, state: ExecutionState, issued_at: datetime) -> list[Command]:
    commands: list[Command] = []
    started = state.started
    if started.parent_run_id is not None and event.parent_execution_id is not None:
        status = STATUS_AFTER[event.type]
        result = event.attributes.result.value if isinstance(event, ExecutionCompleted) else None
        failure = _close_failure(event, status)
        commands.append(
            _to_parent(
                event,
                event.parent_execution_id,
                ChildReportPayload(
                    run_id=started.parent_run_id,
                    child_execution_id=event.execution_id,
                    child_run_id=event.run_id,
                    stage="closed",
                    status=status,
                    result=result,
                    failure=failure,
                ),
                issued_at,
            )
        )
    for child_id, policy in sorted(state.children.items()):
        command_id = f"{event.event_id}:close-child:{child_id}"
        reason = f"parent {event.execution_id!r} closed ({STATUS_AFTER[event.type].value})"
        if policy is ParentClosePolicy.TERMINATE:
            commands.append(
                TerminateExecution(
                    command_id=command_id,
                    execution_id=child_id,
                    issued_at=issued_at,
                    payload=ReasonPayload(reason=reason),
                )
            )
        elif policy is ParentClosePolicy.REQUEST_CANCEL:
            commands.append(
                CancelExecution(
                    command_id=command_id,
                    execution_id=child_id,
                    issued_at=issued_at,
                    payload=ReasonPayload(reason=reason),
                )
            )
    return commands


def _close_failure(event: Event, status: ExecutionStatus) -> Failure | None:
    if isinstance(event, ExecutionFailed):
        return event.attributes.failure
    if status is ExecutionStatus.COMPLETED or status is ExecutionStatus.CONTINUED_AS_NEW:
        return None
    reason = getattr(event.attributes, "reason", None)
    message = f"child {status.value.lower()}" + (f": {reason}" if reason else "")
    return Failure(message=message, type=status.value)


def _to_parent(
    event: Event, parent_id: str, payload: ChildReportPayload, issued_at: datetime
) -> RecordChildWorkflow:
    return RecordChildWorkflow(
        command_id=f"{event.event_id}:parent",
        execution_id=parent_id,
        issued_at=issued_at,
        payload=payload,
    )


def start_failed_report(start: StartWorkflow, rejection: Rejected) -> RecordChildWorkflow | None:
    """A child's StartWorkflow the engine refused, reported to its parent (None for a
    start that is not a child's). The command id derives from the start's."""
    p = start.payload
    if p.parent_run_id is None or p.parent_execution_id is None:
        return None
    return RecordChildWorkflow(
        command_id=f"{start.command_id}:start-failed",
        execution_id=p.parent_execution_id,
        issued_at=start.issued_at,
        payload=ChildReportPayload(
            run_id=p.parent_run_id,
            child_execution_id=start.execution_id,
            stage="start_failed",
            failure=Failure(message=rejection.message, type=rejection.code.value),
        ),
    )
