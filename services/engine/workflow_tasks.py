"""The worker protocol's half of the domain: workflow tasks, timers, children, updates.

Pure like services/engine/domain.py, whose helpers it builds on and into whose `decide` and
`evolve` it registers its deciders and appliers. The contract is docs/worker-protocol.md;
the rules are in docs/domain.md.

`derived_commands` is what the engine publishes because of a commit's events in OTHER
streams (a child's start, reports to a parent, parent-close policies); every command id
derives from an event id, so a re-published commit applies them once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schemas.commands import (
    FINAL_STEP_KINDS,
    ActivityStep,
    CancelExecution,
    CancelStep,
    CancelTimerStep,
    ChildReportPayload,
    Command,
    CompleteStep,
    CompleteWorkflowTask,
    ContinueAsNewStep,
    CustomTaskStep,
    FailStep,
    FailWorkflowTask,
    FireTimer,
    MarkerStep,
    ReasonPayload,
    RecordChildWorkflow,
    StartChildStep,
    StartTimerStep,
    StartWorkflow,
    StartWorkflowPayload,
    Step,
    TerminateExecution,
    UpdateAcceptedStep,
    UpdateCompletedStep,
)
from schemas.common import ExecutionStatus, Failure, ParentClosePolicy, Payload
from schemas.events import (
    STATUS_AFTER,
    ActivityTaskEvent,
    CancelRequested,
    ChildInitiated,
    ChildInitiatedAttributes,
    ChildReportAttributes,
    ChildReported,
    CompletedAttributes,
    Event,
    EventType,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    MarkerRecorded,
    MarkerRecordedAttributes,
    TimerAttributes,
    TimerEvent,
    TimerStarted,
    TimerStartedAttributes,
    UpdateAccepted,
    UpdateAcceptedAttributes,
    UpdateCompleted,
    UpdateCompletedAttributes,
    WorkflowTaskCompleted,
    WorkflowTaskCompletedAttributes,
    WorkflowTaskFailed,
    WorkflowTaskFailedAttributes,
    closes_run,
)
from schemas.outcomes import RejectionCode
from services.engine import domain
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
    add_activity,
    add_custom_task,
    cancel_run,
    continuation_id,
    continue_run,
    evolve,
    fail_run,
)

__all__ = [
    "CANCEL_DEADLINE_TIMER",
    "derived_commands",
    "start_failed_report",
    "workflow_task_retry_delay_seconds",
    "workflow_task_timer_id",
]

CANCEL_DEADLINE_TIMER = "cancel-deadline"
_WORKFLOW_TASK_TIMER_PREFIX = "workflow-task:"
_FIRST_RETRY_SECONDS = 1.0
_MAX_RETRY_SECONDS = 600.0


def workflow_task_timer_id(seq: int) -> str:
    """The timer that retries a failed workflow task (seq = the WORKFLOW_TASK_FAILED commit)."""
    return f"{_WORKFLOW_TASK_TIMER_PREFIX}{seq}"


def workflow_task_retry_delay_seconds(failures_before: int) -> float:
    """Back-off before retrying a workflow task: 1 s * 2^n, capped at 10 minutes."""
    return min(_FIRST_RETRY_SECONDS * 2.0 ** min(failures_before, 30), _MAX_RETRY_SECONDS)


def _is_engine_timer(timer_id: str) -> bool:
    return timer_id == CANCEL_DEADLINE_TIMER or timer_id.startswith(_WORKFLOW_TASK_TIMER_PREFIX)


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
    # canceled in one task is fine), so the events are folded as they are added.
    working = evolve(state, commit.events[-1])
    markers: set[str] = set()
    for position, step in enumerate(p.steps):
        before = len(commit.events)
        try:
            _add_step(commit, working, step, markers, ctx)
        except _InvalidStep as problem:
            raise Rejected(
                RejectionCode.INVALID_WORKFLOW_TASK,
                f"CompleteWorkflowTask: steps[{position}] ({step.kind}): {problem}",
            ) from None
        for event in commit.events[before:]:
            working = evolve(working, event)
    return commit.done()


class _InvalidStep(Exception):
    """A step the run's state does not allow; the message says why."""


def _add_step(
    commit: _Commit, state: ExecutionState, step: Step, markers: set[str], ctx: Context
) -> None:
    if step.kind in FINAL_STEP_KINDS and not state.is_open:
        raise _InvalidStep("the run is already closed by an earlier step")
    adder = _STEP_ADDERS[type(step)]
    adder(commit, state, step, markers, ctx)


def _add_activity_step(
    commit: _Commit, state: ExecutionState, step: ActivityStep, _m: set[str], _c: Context
) -> None:
    running = state.activities.get(step.activity_id)
    if step.stage == "started":
        if running is not None:
            raise _InvalidStep(f"activity {step.activity_id!r} is already running")
    elif running is None:
        raise _InvalidStep(f"activity {step.activity_id!r} is not running")
    elif running != step.attempt:
        raise _InvalidStep(
            f"activity {step.activity_id!r} runs attempt {running}, not {step.attempt}"
        )
    add_activity(commit, step.activity_id, step)


def _add_custom_task_step(
    commit: _Commit, state: ExecutionState, step: CustomTaskStep, _m: set[str], _c: Context
) -> None:
    add_custom_task(commit, step)


def _add_start_timer(
    commit: _Commit, state: ExecutionState, step: StartTimerStep, _m: set[str], ctx: Context
) -> None:
    if _is_engine_timer(step.timer_id):
        raise _InvalidStep(f"timer id {step.timer_id!r} is reserved for the engine")
    if step.timer_id in state.timers:
        raise _InvalidStep(f"timer {step.timer_id!r} is already pending")
    env = commit.stamp()
    attributes = TimerStartedAttributes(
        timer_id=step.timer_id,
        duration_seconds=step.duration_seconds,
        fire_at_ns=ctx.now_ns + _seconds_to_ns(step.duration_seconds),
    )
    commit.add(TimerStarted(**env, attributes=attributes))


def _add_cancel_timer(
    commit: _Commit, state: ExecutionState, step: CancelTimerStep, _m: set[str], _c: Context
) -> None:
    if _is_engine_timer(step.timer_id) or step.timer_id not in state.timers:
        raise _InvalidStep(f"timer {step.timer_id!r} is not pending")
    env = commit.stamp()
    commit.add(
        TimerEvent(
            **env, type=EventType.TIMER_CANCELED, attributes=TimerAttributes(timer_id=step.timer_id)
        )
    )


def _add_start_child(
    commit: _Commit, state: ExecutionState, step: StartChildStep, _m: set[str], _c: Context
) -> None:
    if step.child_execution_id == state.execution_id:
        raise _InvalidStep("a workflow cannot be its own child")
    if step.child_execution_id in state.children:
        raise _InvalidStep(f"child {step.child_execution_id!r} is already started by this run")
    env = commit.stamp()
    attributes = ChildInitiatedAttributes(
        child_execution_id=step.child_execution_id,
        workflow_name=step.workflow_name,
        input=Payload(value=step.input),
        parent_close_policy=step.parent_close_policy,
        deployment_name=step.deployment_name or state.started.deployment_name,
        execution_timeout_seconds=step.execution_timeout_seconds,
        retry_policy=step.retry_policy,
        display_name=step.display_name,
    )
    commit.add(ChildInitiated(**env, attributes=attributes))


def _add_marker(
    commit: _Commit, state: ExecutionState, step: MarkerStep, markers: set[str], _c: Context
) -> None:
    # Marker ids are the SDK's replay keys: two in one task would make the replay ambiguous.
    if step.marker_id in markers:
        raise _InvalidStep(f"marker {step.marker_id!r} is recorded twice")
    markers.add(step.marker_id)
    env = commit.stamp()
    attributes = MarkerRecordedAttributes(
        marker_id=step.marker_id, name=step.name, value=Payload(value=step.value)
    )
    commit.add(MarkerRecorded(**env, attributes=attributes))


def _add_update_accepted(
    commit: _Commit, state: ExecutionState, step: UpdateAcceptedStep, _m: set[str], _c: Context
) -> None:
    if step.update_id in state.updates:
        raise _InvalidStep(f"update {step.update_id!r} is already accepted")
    env = commit.stamp()
    attributes = UpdateAcceptedAttributes(
        update_id=step.update_id, update_name=step.update_name, input=Payload(value=step.input)
    )
    commit.add(UpdateAccepted(**env, attributes=attributes))


def _add_update_completed(
    commit: _Commit, state: ExecutionState, step: UpdateCompletedStep, _m: set[str], _c: Context
) -> None:
    if step.update_id not in state.updates:
        raise _InvalidStep(f"update {step.update_id!r} is not accepted")
    env = commit.stamp()
    attributes = UpdateCompletedAttributes(
        update_id=step.update_id,
        result=_wrap(step.result, always=step.failure is None),
        failure=step.failure,
    )
    commit.add(UpdateCompleted(**env, attributes=attributes))


def _add_complete(
    commit: _Commit, state: ExecutionState, step: CompleteStep, _m: set[str], _c: Context
) -> None:
    env = commit.stamp()
    commit.add(
        ExecutionCompleted(
            **env,
            attributes=CompletedAttributes(
                task_id=_task_id(env), result=Payload(value=step.result), attempt=state.attempt
            ),
        )
    )


def _add_fail(
    commit: _Commit, state: ExecutionState, step: FailStep, _m: set[str], ctx: Context
) -> None:
    fail_run(commit, state, step.failure, step.retryable, ctx)


def _add_continue_as_new(
    commit: _Commit, state: ExecutionState, step: ContinueAsNewStep, _m: set[str], ctx: Context
) -> None:
    new_execution_id = continuation_id(state, step.new_execution_id, ctx)
    if new_execution_id is None:
        raise _InvalidStep("a run cannot continue as its own execution; name another id")
    continue_run(commit, state, new_execution_id, step, ctx)


def _add_cancel(
    commit: _Commit, state: ExecutionState, step: CancelStep, _m: set[str], _c: Context
) -> None:
    cancel_run(commit, state, step.reason)


_StepAdder = Callable[[_Commit, ExecutionState, Any, set[str], Context], None]
_STEP_ADDERS: Mapping[type[Any], _StepAdder] = {
    ActivityStep: _add_activity_step,
    CustomTaskStep: _add_custom_task_step,
    StartTimerStep: _add_start_timer,
    CancelTimerStep: _add_cancel_timer,
    StartChildStep: _add_start_child,
    MarkerStep: _add_marker,
    UpdateAcceptedStep: _add_update_accepted,
    UpdateCompletedStep: _add_update_completed,
    CompleteStep: _add_complete,
    FailStep: _add_fail,
    ContinueAsNewStep: _add_continue_as_new,
    CancelStep: _add_cancel,
}


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
    if timer_id == CANCEL_DEADLINE_TIMER:
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
    prefix = _WORKFLOW_TASK_TIMER_PREFIX
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
            "timers": {**state.timers, CANCEL_DEADLINE_TIMER: deadline},
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


# --- commands for other streams ---------------------------------------------------------


def derived_commands(events: Sequence[Event], ctx: Context, state: ExecutionState) -> list[Command]:
    """Commands a commit's events send to OTHER executions, besides a continue-as-new
    successor (`domain.successor_commands`): a child's StartWorkflow, this execution's
    start and close reported to its parent, and the parent-close policy of open children.

    `state` is the execution's state right after the commit. Command ids derive from
    event ids: a re-published commit derives the same commands.
    """
    commands: list[Command] = []
    issued_at = domain._datetime_from_ns(ctx.now_ns)
    reset = any(e.type is EventType.WORKFLOW_RUN_RESET for e in events)
    for event in events:
        if isinstance(event, ChildInitiated):
            commands.append(_child_start(event, state, issued_at))
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
                        issued_at,
                    )
                )
        elif closes_run(event) and not reset:
            # A reset's TERMINATED ends a run another one replaces: not a close the parent
            # or the children should see (documented in docs/domain.md).
            commands.extend(_closing_commands(event, state, issued_at))
    return commands


def _child_start(event: ChildInitiated, state: ExecutionState, issued_at: Any) -> StartWorkflow:
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


def _closing_commands(event: Event, state: ExecutionState, issued_at: Any) -> list[Command]:
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
    event: Event, parent_id: str, payload: ChildReportPayload, issued_at: Any
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
