"""The steps of a `CompleteWorkflowTask` (pure): each is checked against the run's state
as the steps before it left it, then added to the commit as events.

Part of the worker protocol's half of the domain (services/engine/workflow_tasks.py);
the contract is docs/worker-protocol.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from schemas.commands import (
    FINAL_STEP_KINDS,
    ActivityStep,
    CancelStep,
    CancelTimerStep,
    CompleteStep,
    ContinueAsNewStep,
    CustomTaskStep,
    FailStep,
    MarkerStep,
    StartChildStep,
    StartTimerStep,
    Step,
    UpdateAcceptedStep,
    UpdateCompletedStep,
)
from schemas.common import Payload
from schemas.events import (
    ChildInitiated,
    ChildInitiatedAttributes,
    CompletedAttributes,
    Event,
    EventType,
    ExecutionCompleted,
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
)
from services.engine.domain import (
    Context,
    ExecutionState,
    _Commit,
    _seconds_to_ns,
    _task_id,
    _wrap,
    add_activity,
    add_custom_task,
    cancel_run,
    continuation_id,
    continue_run,
    fail_run,
)

CANCEL_DEADLINE_TIMER = "cancel-deadline"
WORKFLOW_TASK_TIMER_PREFIX = "workflow-task:"


def is_engine_timer(timer_id: str) -> bool:
    """Timers the engine sets itself; the workflow code may not start or cancel them."""
    return timer_id == CANCEL_DEADLINE_TIMER or timer_id.startswith(WORKFLOW_TASK_TIMER_PREFIX)


class InvalidStep(Exception):
    """A step the run's state does not allow; the message says why."""


@dataclass(frozen=True, slots=True)
class _Task:
    """The task a step belongs to: the commit it adds to and the state it is checked
    against."""

    commit: _Commit
    state: ExecutionState
    ctx: Context
    markers: set[str]
    """Marker ids recorded by earlier steps of the same task."""

    def record(self, event_class: Callable[..., Event], attributes: BaseModel, **kw: Any) -> None:
        """Add one event of `event_class` (`kw`: its `type`, for classes of several)."""
        self.commit.add(event_class(**self.commit.stamp(), attributes=attributes, **kw))


def _check(allowed: bool, problem: str) -> None:
    if not allowed:
        raise InvalidStep(problem)


def add_step(
    commit: _Commit, state: ExecutionState, step: Step, markers: set[str], ctx: Context
) -> None:
    """Check `step` against `state` and add its events to `commit`; `InvalidStep` if the
    state does not allow it."""
    _check(
        step.kind not in FINAL_STEP_KINDS or state.is_open,
        "the run is already closed by an earlier step",
    )
    _STEPS[type(step)](_Task(commit, state, ctx, markers), step)


def _activity(t: _Task, step: ActivityStep) -> None:
    running = t.state.activities.get(step.activity_id)
    name = f"activity {step.activity_id!r}"
    if step.stage == "started":
        _check(running is None, f"{name} is already running")
    else:
        _check(running is not None, f"{name} is not running")
        _check(running == step.attempt, f"{name} runs attempt {running}, not {step.attempt}")
    add_activity(t.commit, step.activity_id, step)


def _custom_task(t: _Task, step: CustomTaskStep) -> None:
    add_custom_task(t.commit, step)


def _start_timer(t: _Task, step: StartTimerStep) -> None:
    timer = f"timer {step.timer_id!r}"
    _check(
        not is_engine_timer(step.timer_id), f"timer id {step.timer_id!r} is reserved for the engine"
    )
    _check(step.timer_id not in t.state.timers, f"{timer} is already pending")
    fire_at_ns = t.ctx.now_ns + _seconds_to_ns(step.duration_seconds)
    t.record(
        TimerStarted,
        TimerStartedAttributes(
            timer_id=step.timer_id, duration_seconds=step.duration_seconds, fire_at_ns=fire_at_ns
        ),
    )


def _cancel_timer(t: _Task, step: CancelTimerStep) -> None:
    pending = not is_engine_timer(step.timer_id) and step.timer_id in t.state.timers
    _check(pending, f"timer {step.timer_id!r} is not pending")
    t.record(TimerEvent, TimerAttributes(timer_id=step.timer_id), type=EventType.TIMER_CANCELED)


def _start_child(t: _Task, step: StartChildStep) -> None:
    child = step.child_execution_id
    _check(child != t.state.execution_id, "a workflow cannot be its own child")
    _check(child not in t.state.children, f"child {child!r} is already started by this run")
    t.record(
        ChildInitiated,
        ChildInitiatedAttributes(
            child_execution_id=child,
            workflow_name=step.workflow_name,
            input=Payload(value=step.input),
            parent_close_policy=step.parent_close_policy,
            deployment_name=step.deployment_name or t.state.started.deployment_name,
            execution_timeout_seconds=step.execution_timeout_seconds,
            retry_policy=step.retry_policy,
            display_name=step.display_name,
        ),
    )


def _marker(t: _Task, step: MarkerStep) -> None:
    # Marker ids are the SDK's replay keys: two in one task would make the replay ambiguous.
    _check(step.marker_id not in t.markers, f"marker {step.marker_id!r} is recorded twice")
    t.markers.add(step.marker_id)
    t.record(
        MarkerRecorded,
        MarkerRecordedAttributes(
            marker_id=step.marker_id, name=step.name, value=Payload(value=step.value)
        ),
    )


def _update_accepted(t: _Task, step: UpdateAcceptedStep) -> None:
    _check(step.update_id not in t.state.updates, f"update {step.update_id!r} is already accepted")
    t.record(
        UpdateAccepted,
        UpdateAcceptedAttributes(
            update_id=step.update_id, update_name=step.update_name, input=Payload(value=step.input)
        ),
    )


def _update_completed(t: _Task, step: UpdateCompletedStep) -> None:
    _check(step.update_id in t.state.updates, f"update {step.update_id!r} is not accepted")
    t.record(
        UpdateCompleted,
        UpdateCompletedAttributes(
            update_id=step.update_id,
            result=_wrap(step.result, always=step.failure is None),
            failure=step.failure,
        ),
    )


def _complete(t: _Task, step: CompleteStep) -> None:
    env = t.commit.stamp()
    attributes = CompletedAttributes(
        task_id=_task_id(env), result=Payload(value=step.result), attempt=t.state.attempt
    )
    t.commit.add(ExecutionCompleted(**env, attributes=attributes))


def _fail(t: _Task, step: FailStep) -> None:
    fail_run(t.commit, t.state, step.failure, step.retryable, t.ctx)


def _continue_as_new(t: _Task, step: ContinueAsNewStep) -> None:
    new_execution_id = continuation_id(t.state, step.new_execution_id, t.ctx)
    if new_execution_id is None:
        raise InvalidStep("a run cannot continue as its own execution; name another id")
    continue_run(t.commit, t.state, new_execution_id, step, t.ctx)


def _cancel(t: _Task, step: CancelStep) -> None:
    cancel_run(t.commit, t.state, step.reason)


_STEPS: Mapping[type[Any], Callable[[_Task, Any], None]] = {
    ActivityStep: _activity,
    CustomTaskStep: _custom_task,
    StartTimerStep: _start_timer,
    CancelTimerStep: _cancel_timer,
    StartChildStep: _start_child,
    MarkerStep: _marker,
    UpdateAcceptedStep: _update_accepted,
    UpdateCompletedStep: _update_completed,
    CompleteStep: _complete,
    FailStep: _fail,
    ContinueAsNewStep: _continue_as_new,
    CancelStep: _cancel,
}
