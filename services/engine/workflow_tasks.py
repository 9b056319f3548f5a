"""The worker protocol's half of the domain: workflow tasks, timers, children, updates.

Pure like services/engine/domain.py, whose helpers it builds on and into whose `decide` and
`evolve` it registers its deciders and appliers. The contract is docs/worker-protocol.md;
the rules are in docs/domain.md.

The steps of a CompleteWorkflowTask are checked and added in
services/engine/workflow_steps.py; the commands a commit sends to other executions are
derived in services/engine/derived_commands.py (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.commands import (
    CompleteWorkflowTask,
    FailWorkflowTask,
    FireTimer,
    RecordChildWorkflow,
)
from schemas.common import ExecutionStatus
from schemas.events import (
    ActivityTaskEvent,
    CancelRequested,
    ChildInitiated,
    ChildReportAttributes,
    ChildReported,
    Event,
    EventType,
    TimerAttributes,
    TimerEvent,
    TimerStarted,
    UpdateAccepted,
    UpdateCompleted,
    WorkflowTaskCompleted,
    WorkflowTaskCompletedAttributes,
    WorkflowTaskFailed,
    WorkflowTaskFailedAttributes,
)
from schemas.outcomes import RejectionCode
from services.engine import domain
from services.engine import workflow_steps as steps  # a module: the domain imports us
from services.engine.derived_commands import derived_commands, start_failed_report
from services.engine.domain import (
    Context,
    ExecutionState,
    Rejected,
    _Commit,
    _describe,
    _require_latest_open_run,
    _require_running_run,
    _require_state,
    _seconds_to_ns,
    _task_id,
    _wrap,
    cancel_run,
    evolve,
)

__all__ = [
    "derived_commands",
    "start_failed_report",
    "workflow_task_retry_delay_seconds",
    "workflow_task_timer_id",
]

_FIRST_RETRY_SECONDS = 1.0
_MAX_RETRY_SECONDS = 600.0


def workflow_task_timer_id(seq: int) -> str:
    """The timer that retries a failed workflow task (seq = the WORKFLOW_TASK_FAILED commit)."""
    return f"{steps.WORKFLOW_TASK_TIMER_PREFIX}{seq}"


def workflow_task_retry_delay_seconds(failures_before: int) -> float:
    """Back-off before retrying a workflow task: 1 s * 2^n, capped at 10 minutes."""
    return min(_FIRST_RETRY_SECONDS * 2.0 ** min(failures_before, 30), _MAX_RETRY_SECONDS)


# --- CompleteWorkflowTask / FailWorkflowTask -------------------------------------------


def _require_fresh_view(
    state: ExecutionState | None, cmd: CompleteWorkflowTask | FailWorkflowTask
) -> ExecutionState:
    state = _require_running_run(state, cmd, cmd.payload.run_id)
    task_seq = cmd.payload.task_seq
    if state.workflow_task_seq is not None and task_seq < state.workflow_task_seq:
        raise Rejected(
            RejectionCode.STALE_WORKFLOW_TASK,
            f"{cmd.type}: the replay saw seq {task_seq}, but run {state.run_id!r} was "
            f"already advanced at seq {state.workflow_task_seq}",
        )
    if task_seq > state.seq:
        raise Rejected(
            RejectionCode.INVALID_WORKFLOW_TASK,
            f"{cmd.type}: task_seq {task_seq} is beyond the last seq {state.seq} of "
            f"{_describe(state)}",
        )
    return state


def _decide_complete_task(
    state: ExecutionState | None, cmd: CompleteWorkflowTask, ctx: Context
) -> list[Event]:
    state = _require_fresh_view(state, cmd)
    p = cmd.payload
    commit = _Commit.after(state, cmd, ctx)
    env = commit.stamp()
    done = WorkflowTaskCompletedAttributes(task_seq=p.task_seq, worker_id=p.worker_id)
    commit.add(WorkflowTaskCompleted(**env, attributes=done))
    # Each step is checked against the state its predecessors left (a timer started and
    # canceled in one task is fine), so the events are folded as they are added; the last
    # step's are not: no step is checked against them, and the engine folds the whole
    # commit after `decide` anyway (a fold is ~7 µs, a quarter of a one-activity task's).
    working = evolve(state, commit.events[-1])
    markers: set[str] = set()
    last = len(p.steps) - 1
    for position, step in enumerate(p.steps):
        before = len(commit.events)
        try:
            steps.add_step(commit, working, step, markers, ctx)
        except steps.InvalidStep as problem:
            raise Rejected(
                RejectionCode.INVALID_WORKFLOW_TASK,
                f"CompleteWorkflowTask: steps[{position}] ({step.kind}): {problem}",
            ) from None
        if position < last:
            for event in commit.events[before:]:
                working = evolve(working, event)
    return commit.done()


def _decide_fail_task(
    state: ExecutionState | None, cmd: FailWorkflowTask, ctx: Context
) -> list[Event]:
    state = _require_fresh_view(state, cmd)
    commit = _Commit.after(state, cmd, ctx)
    env = commit.stamp()
    delay = workflow_task_retry_delay_seconds(state.workflow_task_failures)
    attributes = WorkflowTaskFailedAttributes(
        task_id=_task_id(env),
        failure=cmd.payload.failure,
        task_seq=cmd.payload.task_seq,
        worker_id=cmd.payload.worker_id,
        retry_at_ns=ctx.now_ns + _seconds_to_ns(delay),
    )
    commit.add(WorkflowTaskFailed(**env, attributes=attributes))
    return commit.done()


# --- FireTimer --------------------------------------------------------------------------


def _decide_fire_timer(state: ExecutionState | None, cmd: FireTimer, ctx: Context) -> list[Event]:
    state = _require_state(state, cmd)
    timer_id = cmd.payload.timer_id
    if cmd.payload.run_id != state.run_id or not state.is_open or timer_id not in state.timers:
        raise Rejected(
            RejectionCode.TIMER_NOT_PENDING,
            f"FireTimer: timer {timer_id!r} of run {cmd.payload.run_id!r} is not pending in "
            f"{_describe(state)}",
        )
    commit = _Commit.after(state, cmd, ctx)
    if timer_id == steps.CANCEL_DEADLINE_TIMER:
        # The code did not end the run within the grace period: the engine cancels it.
        cancel_run(commit, state, _DEADLINE_REASON)
        return commit.done()
    env = commit.stamp()
    attributes = TimerAttributes(timer_id=timer_id)
    commit.add(TimerEvent(**env, type=EventType.TIMER_FIRED, attributes=attributes))
    return commit.done()


_DEADLINE_REASON = "the workflow did not end within the cancel grace period"


# --- RecordChildWorkflow ----------------------------------------------------------------

_CHILD_EVENT = {
    "started": EventType.CHILD_WORKFLOW_STARTED,
    "start_failed": EventType.CHILD_WORKFLOW_START_FAILED,
    "closed": EventType.CHILD_WORKFLOW_CLOSED,
}


def _decide_child(
    state: ExecutionState | None, cmd: RecordChildWorkflow, ctx: Context
) -> list[Event]:
    state = _require_latest_open_run(state, cmd, cmd.payload.run_id)
    p = cmd.payload
    if p.child_execution_id not in state.children:
        raise Rejected(
            RejectionCode.CHILD_NOT_FOUND,
            f"RecordChildWorkflow: {_describe(state)} has no open child {p.child_execution_id!r}",
        )
    commit = _Commit.after(state, cmd, ctx)
    env = commit.stamp()
    attributes = ChildReportAttributes(
        child_execution_id=p.child_execution_id,
        child_run_id=p.child_run_id,
        status=p.status,
        result=_wrap(p.result, always=p.status is ExecutionStatus.COMPLETED),
        failure=p.failure,
    )
    commit.add(ChildReported(**env, type=_CHILD_EVENT[p.stage], attributes=attributes))
    return commit.done()


# --- evolve -----------------------------------------------------------------------------


def _without(mapping: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def _apply_task_completed(state: ExecutionState, event: Event) -> ExecutionState:
    # A pending workflow-task retry is moot once a worker advanced the run.
    prefix = steps.WORKFLOW_TASK_TIMER_PREFIX
    timers = {k: v for k, v in state.timers.items() if not k.startswith(prefix)}
    return state.model_copy(
        update={"workflow_task_seq": event.seq, "workflow_task_failures": 0, "timers": timers}
    )


def _apply_task_failed(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, WorkflowTaskFailed)
    retry_at = event.attributes.retry_at_ns
    timers = dict(state.timers)
    if retry_at is not None:
        timers[workflow_task_timer_id(event.seq)] = retry_at
    return state.model_copy(
        update={"workflow_task_failures": state.workflow_task_failures + 1, "timers": timers}
    )


def _apply_timer_started(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, TimerStarted)
    timers = {**state.timers, event.attributes.timer_id: event.attributes.fire_at_ns}
    return state.model_copy(update={"timers": timers})


def _apply_timer_ended(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, TimerEvent)
    return state.model_copy(update={"timers": _without(state.timers, event.attributes.timer_id)})


def _apply_cancel_requested(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, CancelRequested)
    deadline = event.attributes.cancel_deadline_ns
    return state.model_copy(
        update={
            "cancel_deadline_ns": deadline,
            "timers": {**state.timers, steps.CANCEL_DEADLINE_TIMER: deadline},
        }
    )


def _apply_activity(state: ExecutionState, event: Event) -> ExecutionState:
    # Tolerant on purpose: RecordActivityTask reports are recorded as reported.
    assert isinstance(event, ActivityTaskEvent)
    activity_id = event.attributes.task_id
    if event.type is EventType.ACTIVITY_TASK_STARTED:
        activities = {**state.activities, activity_id: event.attributes.attempt}
    else:
        activities = _without(state.activities, activity_id)
    return state.model_copy(update={"activities": activities})


def _apply_child_initiated(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, ChildInitiated)
    a = event.attributes
    return state.model_copy(
        update={"children": {**state.children, a.child_execution_id: a.parent_close_policy}}
    )


def _apply_child_ended(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, ChildReported)
    children = _without(state.children, event.attributes.child_execution_id)
    return state.model_copy(update={"children": children})


def _apply_update_accepted(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, UpdateAccepted)
    a = event.attributes
    return state.model_copy(update={"updates": {**state.updates, a.update_id: a.update_name}})


def _apply_update_completed(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, UpdateCompleted)
    return state.model_copy(update={"updates": _without(state.updates, event.attributes.update_id)})


def _unchanged(state: ExecutionState, event: Event) -> ExecutionState:
    return state


domain.register(
    {
        CompleteWorkflowTask: _decide_complete_task,
        FailWorkflowTask: _decide_fail_task,
        FireTimer: _decide_fire_timer,
        RecordChildWorkflow: _decide_child,
    },
    {
        EventType.WORKFLOW_TASK_COMPLETED: _apply_task_completed,
        EventType.WORKFLOW_TASK_FAILED: _apply_task_failed,
        EventType.TIMER_STARTED: _apply_timer_started,
        EventType.TIMER_FIRED: _apply_timer_ended,
        EventType.TIMER_CANCELED: _apply_timer_ended,
        EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED: _apply_cancel_requested,
        EventType.ACTIVITY_TASK_STARTED: _apply_activity,
        EventType.ACTIVITY_TASK_COMPLETED: _apply_activity,
        EventType.ACTIVITY_TASK_RETRYING: _apply_activity,
        EventType.ACTIVITY_TASK_FAILED: _apply_activity,
        EventType.CHILD_WORKFLOW_INITIATED: _apply_child_initiated,
        EventType.CHILD_WORKFLOW_STARTED: _unchanged,
        EventType.CHILD_WORKFLOW_START_FAILED: _apply_child_ended,
        EventType.CHILD_WORKFLOW_CLOSED: _apply_child_ended,
        EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED: _apply_update_accepted,
        EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED: _apply_update_completed,
    },
)
