"""One workflow run's code, driven by its history: the replay machine.

A `WorkflowInstance` owns the user's workflow object and a `DeterministicLoop`. The worker
feeds it the run's events in stream order (`apply`), then asks it to go on live
(`go_live`): every command the code issues (an activity, a timer, a child, a marker …) is
a *step*. While replaying, each step must equal the event the history recorded at that
place (else `NondeterminismError`); live, steps are collected and the worker reports them
in one `CompleteWorkflowTask`.

How the history is replayed (docs/worker-protocol.md): events outside workflow-task
commits are *inputs* (signals, fired timers, child results, cancel requests, activity
reports); a workflow-task commit (`WORKFLOW_TASK_COMPLETED {task_seq}` + its step events)
is what the code did after seeing every input up to `task_seq`. So before a task commit's
steps are matched, the inputs with seq <= task_seq are delivered; inputs after the last
task commit are delivered when the instance goes live. Inside a task commit, the events
that resolve something (an activity's result, an accepted update) are applied whenever
the code is idle and such an event is next, exactly as the live worker applied them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from runstore.workflows._definitions import (
    ActivityDefinition,
    RetryPolicy,
    WorkflowDefinition,
    call_arguments,
    from_json,
    to_json,
)
from runstore.workflows._errors import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    ContinueAsNewRequest,
    NondeterminismError,
    WorkflowCancelledError,
    failure_of,
)
from runstore.workflows._loop import DeterministicLoop
from schemas.commands import (
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
from schemas.common import ExecutionStatus, Failure, ParentClosePolicy
from schemas.events import Event, EventType

log = logging.getLogger("runstore.workflows")

current: contextvars.ContextVar[WorkflowInstance] = contextvars.ContextVar("runstore_workflow")

_RESOLUTIONS = frozenset(
    {
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.ACTIVITY_TASK_RETRYING,
        EventType.ACTIVITY_TASK_FAILED,
        EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    }
)
_INPUTS = frozenset(
    {
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.TIMER_FIRED,
        EventType.CHILD_WORKFLOW_STARTED,
        EventType.CHILD_WORKFLOW_START_FAILED,
        EventType.CHILD_WORKFLOW_CLOSED,
        EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED,
    }
)
_FINAL_EVENTS = frozenset(
    {
        EventType.WORKFLOW_EXECUTION_COMPLETED,
        EventType.WORKFLOW_EXECUTION_FAILED,
        EventType.WORKFLOW_EXECUTION_CANCELED,
        EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED,
        EventType.WORKFLOW_EXECUTION_TERMINATED,
        EventType.WORKFLOW_EXECUTION_TIMED_OUT,
    }
)
_STEP_EVENT = {
    ("activity", "started"): EventType.ACTIVITY_TASK_STARTED,
    ("activity", "completed"): EventType.ACTIVITY_TASK_COMPLETED,
    ("activity", "retrying"): EventType.ACTIVITY_TASK_RETRYING,
    ("activity", "failed"): EventType.ACTIVITY_TASK_FAILED,
    ("start_timer", None): EventType.TIMER_STARTED,
    ("cancel_timer", None): EventType.TIMER_CANCELED,
    ("start_child", None): EventType.CHILD_WORKFLOW_INITIATED,
    ("marker", None): EventType.MARKER_RECORDED,
    ("update_accepted", None): EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    ("update_completed", None): EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED,
}


@dataclass
class _Activity:
    activity_id: str
    definition: ActivityDefinition
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]
    retry_policy: RetryPolicy
    start_to_close_timeout: timedelta | None
    heartbeat_timeout: timedelta | None
    attempt: int = 1
    resolved: bool = False
    waiting_retry: bool = False


@dataclass
class ActivityRequest:
    """An activity attempt the worker must run for real (live only)."""

    activity_id: str
    definition: ActivityDefinition
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempt: int
    start_to_close_timeout: timedelta | None
    heartbeat_timeout: timedelta | None


@dataclass
class _Child:
    started: asyncio.Future[str]
    result: asyncio.Future[Any]


@dataclass
class _PendingUpdate:
    update_id: str
    name: str


class WorkflowInstance:
    """The live object of one run of one workflow, stepped by the worker."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        *,
        execution_id: str,
        run_id: str,
        input: Any,
        attempt: int,
        activities: dict[str, ActivityDefinition],
        started_ns: int,
    ) -> None:
        self.definition = definition
        self.execution_id = execution_id
        self.run_id = run_id
        self.workflow_name = definition.name
        self.attempt = attempt
        self.activities = activities
        self.now_ns = started_ns
        self.loop = DeterministicLoop(lambda: self.now_ns / 1e9)  # type: ignore[abstract]
        self.rng = random.Random(f"{run_id}:{attempt}")
        self.replaying = True
        self.finished = False
        self.cancel_requested = False
        self.applied_seq = 0
        """The last seq of the history this instance has taken in."""
        self.last_command_id: str | None = None
        """The command of the worker's last live activation, until the history shows it."""
        self._input = input
        self._counters: dict[str, int] = {}
        self._expected: deque[Event] = deque()
        self._steps: list[Step] = []
        self._activities: dict[str, _Activity] = {}
        self._live_requests: list[ActivityRequest] = []
        self._timers: dict[str, asyncio.Future[None]] = {}
        self._timer_callbacks: dict[str, Callable[[], None]] = {}
        self._children: dict[str, _Child] = {}
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._signal_buffer: list[tuple[str, Any]] = []
        self._update_results: dict[str, tuple[bool, Any]] = {}
        self._undelivered: deque[Event] = deque()
        # Outcomes of activities a reset carried into this run, by activity id: the code
        # gets them back without running the activity again (see `_take_reset`).
        self._carried: dict[str, Event] = {}
        self.obj = definition.cls()
        self._main: asyncio.Task[Any] | None = None
        self._violation: NondeterminismError | None = None

    # --- feeding the history ----------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> None:
        """Take in the run's events after `applied_seq`, oldest first (replay)."""
        commit: list[Event] = []
        for event in events:
            if commit and event.seq != commit[0].seq:
                self._apply_commit(commit)
                commit = []
            commit.append(event)
        if commit:
            self._apply_commit(commit)

    def _apply_commit(self, events: list[Event]) -> None:
        seq = events[0].seq
        if seq <= self.applied_seq:
            return
        self.applied_seq = seq
        first = events[0]
        if any(e.type == EventType.WORKFLOW_RUN_RESET for e in events):
            self._take_reset(events)
            return
        if first.type == EventType.WORKFLOW_TASK_COMPLETED:
            task_seq = first.attributes.task_seq
            self._replay_task(task_seq, events[1:])
            return
        for event in events:
            if event.type in _INPUTS or event.type in _RESOLUTIONS:
                self._undelivered.append(event)
            elif event.type in _FINAL_EVENTS:
                self.finished = True
        self.now_ns = max(self.now_ns, events[-1].timestamp_ns)

    def _take_reset(self, events: list[Event]) -> None:
        """The commit that opened this run by a reset. It copied the replaced run's activity
        events up to the reset point and its signals, but no workflow-task commits: so the
        copied activity outcomes are not steps to match. The code gets each back when it
        schedules that activity again (same deterministic id), without running it; the
        copied signals are inputs, delivered before the code runs on."""
        for event in events:
            if event.run_id != self.run_id:
                continue  # the replaced run's TERMINATED
            if event.type in (EventType.ACTIVITY_TASK_COMPLETED, EventType.ACTIVITY_TASK_FAILED):
                self._carried[event.attributes.task_id] = event
            elif event.type in _INPUTS:
                self._undelivered.append(event)
        self.now_ns = max(self.now_ns, events[-1].timestamp_ns)

    def _deliver_inputs(self, up_to: int | None) -> None:
        while self._undelivered and (up_to is None or self._undelivered[0].seq <= up_to):
            event = self._undelivered.popleft()
            self.now_ns = max(self.now_ns, event.timestamp_ns)
            self._start_main()
            self._deliver(event)
        self._start_main()
        self._run()

    def _replay_task(self, task_seq: int, events: list[Event]) -> None:
        """One workflow-task commit: the inputs it saw, then its steps, in their order."""
        self._expected = deque(e for e in events if e.type not in _FINAL_EVENTS)
        closes = any(e.type in _FINAL_EVENTS for e in events)
        self._deliver_inputs(up_to=task_seq)
        while self._expected and not self.finished:
            head = self._expected[0]
            if head.type not in _RESOLUTIONS:
                raise self._diverged(
                    f"the history recorded {_describe_event(head)} here, but the code did not "
                    f"issue it (workflow {self.workflow_name!r}, execution {self.execution_id!r})"
                )
            self._expected.popleft()
            self.now_ns = max(self.now_ns, head.timestamp_ns)
            self._deliver(head)
            self._run()
        self._expected.clear()
        if closes:
            self.finished = True

    # --- going live -------------------------------------------------------------------

    def go_live(self) -> None:
        """Replay is over: deliver the inputs the code has not seen, then run it on."""
        self.replaying = False
        for activity in self._activities.values():
            # Started in the history but never resolved (the worker died, or it was cut
            # off): run that attempt again.
            if not activity.resolved and not activity.waiting_retry and not activity.future.done():
                self._request(activity)
        self._deliver_inputs(up_to=None)

    def take_activity_requests(self) -> list[ActivityRequest]:
        requests, self._live_requests = self._live_requests, []
        return requests

    def activity_outcome(
        self, activity_id: str, attempt: int, result: Any = None, error: BaseException | None = None
    ) -> None:
        """The worker ran an attempt: record it and wake the code (live only)."""
        activity = self._activities.get(activity_id)
        if activity is None or activity.future.done() or activity.attempt != attempt:
            return
        if error is None:
            self._resolve_activity(activity, to_json(result), None)
        else:
            self._resolve_activity(activity, None, failure_of(error), error)
        self._run()

    def accept_update(self, update_id: str, name: str, value: Any) -> None:
        """Record an update the validator accepted and start its handler (live only)."""
        self._emit(UpdateAcceptedStep(update_id=update_id, update_name=name, input=value))
        self._start_update(update_id, name, value)
        self._run()

    def validate_update(self, name: str, value: Any) -> None:
        """Raise if no handler has that name or its validator refuses the value."""
        handler = self.definition.updates[name]
        if handler.validator is not None:
            args, kwargs = call_arguments(handler.validator, value)
            with self._as_current():
                handler.validator(self.obj, *args, **kwargs)

    def query(self, name: str, value: Any) -> Any:
        handler = self.definition.queries[name]
        args, kwargs = call_arguments(handler.method, value)
        with self._as_current():
            result = handler.method(self.obj, *args, **kwargs)
        return to_json(result)

    def activity_abandoned(self, activity_id: str) -> bool:
        """The code stopped waiting for this activity (its wait was cancelled)."""
        activity = self._activities.get(activity_id)
        return activity is None or activity.future.cancelled()

    def update_result(self, update_id: str) -> tuple[bool, Any] | None:
        """(ok, result or failure message) once the update's handler has finished."""
        return self._update_results.pop(update_id, None)

    def take_steps(self) -> list[Step]:
        steps, self._steps = self._steps, []
        return steps

    def has_steps(self) -> bool:
        return bool(self._steps)

    def deliver_inputs(self, up_to: int) -> None:
        """Inputs taken in with `apply` up to seq `up_to`, delivered to the live code (after
        a checkpoint, as a replay delivers them before the next task's steps)."""
        self._deliver_inputs(up_to=up_to)

    # --- the code's commands (called from workflow code through `workflow.*`) ---------

    def next_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}{n}"

    def schedule_activity(
        self,
        definition: ActivityDefinition,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        retry_policy: RetryPolicy | None,
        start_to_close_timeout: timedelta | None,
        heartbeat_timeout: timedelta | None,
    ) -> asyncio.Future[Any]:
        from runstore.workflows._definitions import args_to_json

        activity = _Activity(
            activity_id=self.next_id("a"),
            definition=definition,
            args=args,
            kwargs=kwargs,
            future=self.loop.create_future(),
            retry_policy=retry_policy or definition.retry_policy,
            start_to_close_timeout=start_to_close_timeout or definition.start_to_close_timeout,
            heartbeat_timeout=heartbeat_timeout or definition.heartbeat_timeout,
        )
        self._activities[activity.activity_id] = activity
        carried = self._carried.pop(activity.activity_id, None)
        if carried is not None:
            self._resolve_carried(activity, carried)
            return activity.future
        self._emit(
            ActivityStep(
                activity_id=activity.activity_id,
                activity_name=definition.name,
                stage="started",
                attempt=1,
                input=args_to_json(args, kwargs),
            )
        )
        self._request(activity)
        return activity.future

    def _resolve_carried(self, activity: _Activity, carried: Event) -> None:
        """An activity whose outcome a reset carried over: resolved as recorded."""
        attrs: Any = carried.attributes
        name = activity.definition.name
        if attrs.activity_name != name:
            raise self._diverged(
                f"the code scheduled activity {activity.activity_id} as {name!r}, but before "
                f"the reset it was {attrs.activity_name!r}"
            )
        activity.resolved = True
        activity.attempt = attrs.attempt
        if carried.type == EventType.ACTIVITY_TASK_COMPLETED:
            result = attrs.result.value if attrs.result is not None else None
            activity.future.set_result(from_json(activity.definition.fn, result))
        else:
            activity.future.set_exception(ActivityError(name, attrs.attempt, attrs.failure))

    def start_timer(self, seconds: float, on_fire: Callable[[], None] | None = None) -> str:
        timer_id = self.next_id("t")
        self._emit(StartTimerStep(timer_id=timer_id, duration_seconds=max(0.0, seconds)))
        future: asyncio.Future[None] = self.loop.create_future()
        self._timers[timer_id] = future
        if on_fire is not None:
            self._timer_callbacks[timer_id] = on_fire
        return timer_id

    def timer_future(self, timer_id: str) -> asyncio.Future[None]:
        return self._timers[timer_id]

    def cancel_timer(self, timer_id: str) -> None:
        future = self._timers.get(timer_id)
        if future is None or future.done():
            return
        future.cancel()
        self._timer_callbacks.pop(timer_id, None)
        if not self.finished:
            self._emit(CancelTimerStep(timer_id=timer_id))

    def wait_condition(self, check: Callable[[], bool]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        self._conditions.append((check, future))
        return future

    def start_child(
        self,
        workflow_name: str,
        value: Any,
        *,
        child_id: str | None,
        parent_close_policy: ParentClosePolicy,
        deployment_name: str | None,
        execution_timeout: timedelta | None,
        display_name: str | None,
    ) -> tuple[str, _Child]:
        n = self.next_id("c")
        child_execution_id = child_id or f"{self.execution_id}-{n}"
        self._emit(
            StartChildStep(
                child_execution_id=child_execution_id,
                workflow_name=workflow_name,
                input=to_json(value),
                parent_close_policy=parent_close_policy,
                deployment_name=deployment_name,
                execution_timeout_seconds=(
                    execution_timeout.total_seconds() if execution_timeout else None
                ),
                display_name=display_name,
            )
        )
        child = _Child(self.loop.create_future(), self.loop.create_future())
        self._children[child_execution_id] = child
        return child_execution_id, child

    def side_effect(self, name: str, compute: Callable[[], Any]) -> Any:
        marker_id = self.next_id("m")
        if self.replaying:
            recorded = self._emit(MarkerStep(marker_id=marker_id, name=name, value=None))
            return recorded.attributes.value.value  # type: ignore[union-attr]
        value = to_json(compute())
        self._emit(MarkerStep(marker_id=marker_id, name=name, value=value))
        return value

    def custom_task(self, step: CustomTaskStep) -> None:
        self._emit(step)

    def now(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.now_ns // 1000)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    # --- internals ---------------------------------------------------------------------

    def _as_current(self) -> _CurrentInstance:
        return _CurrentInstance(self)

    def _start_main(self) -> None:
        if self._main is not None or self.finished:
            return
        args, kwargs = call_arguments(self.definition.run_method, self._input)
        coro: Any = self.definition.run_method(self.obj, *args, **kwargs)
        context = contextvars.copy_context()
        context.run(current.set, self)
        self._main = self.loop.create_task(coro, context=context)
        self._main.add_done_callback(self._main_done)

    def _main_done(self, task: asyncio.Task[Any]) -> None:
        if self.finished or self._violation is not None:
            return
        step: Step
        if task.cancelled():
            step = CancelStep(reason="the workflow was canceled")
        else:
            exc = task.exception()
            if exc is None:
                step = CompleteStep(result=to_json(task.result()))
            elif isinstance(exc, ContinueAsNewRequest):
                step = ContinueAsNewStep(input=to_json(exc.input), workflow_name=exc.workflow_name)
            elif isinstance(exc, asyncio.CancelledError) and self.cancel_requested:
                step = CancelStep(reason="the workflow was canceled")
            else:
                retryable = not (isinstance(exc, ApplicationError) and exc.non_retryable)
                step = FailStep(failure=failure_of(exc), retryable=retryable)
        self._final(step)

    def _final(self, step: Step) -> None:
        if self.replaying:
            # A closed run is never replayed further: its final event ends the history.
            self.finished = True
            return
        self._steps.append(step)
        self.finished = True

    def _run(self) -> None:
        """Step the loop until the code is idle and no wait condition became true."""
        token = current.set(self)
        try:
            while True:
                self.loop.run_until_idle()
                ready = [(c, f) for c, f in self._conditions if f.done() or c()]
                if not ready:
                    break
                for item in ready:
                    self._conditions.remove(item)
                    if not item[1].done():
                        item[1].set_result(None)
        finally:
            current.reset(token)
        self.loop.errors.clear()
        if self._violation is not None:
            raise self._violation

    def _emit(self, step: Step) -> Event | None:
        """A step of the code: checked against the history while replaying, kept live."""
        if self.finished and not self.replaying:
            return None
        if not self.replaying:
            self._steps.append(step)
            return None
        if not self._expected:
            raise self._diverged(
                f"the code issued {_describe_step(step)}, which the history does not have "
                f"here (workflow {self.workflow_name!r}, execution {self.execution_id!r})"
            )
        recorded = self._expected.popleft()
        if not _matches(step, recorded):
            raise self._diverged(
                f"the code issued {_describe_step(step)} where the history recorded "
                f"{_describe_event(recorded)} (workflow {self.workflow_name!r}, execution "
                f"{self.execution_id!r})"
            )
        self.now_ns = max(self.now_ns, recorded.timestamp_ns)
        return recorded

    def _diverged(self, message: str) -> NondeterminismError:
        """Remembered as well as raised: workflow code may catch what is raised into it,
        but the workflow task must fail all the same."""
        error = NondeterminismError(message)
        if self._violation is None:
            self._violation = error
        return error

    def _request(self, activity: _Activity) -> None:
        if self.replaying:
            return
        self._live_requests.append(
            ActivityRequest(
                activity_id=activity.activity_id,
                definition=activity.definition,
                args=activity.args,
                kwargs=activity.kwargs,
                attempt=activity.attempt,
                start_to_close_timeout=activity.start_to_close_timeout,
                heartbeat_timeout=activity.heartbeat_timeout,
            )
        )

    def _resolve_activity(
        self,
        activity: _Activity,
        result: Any,
        failure: Failure | None,
        error: BaseException | None = None,
        recorded_stage: str | None = None,
    ) -> None:
        name = activity.definition.name
        if failure is None:
            stage = "completed"
        else:
            non_retryable = (isinstance(error, ApplicationError) and error.non_retryable) or (
                failure.type in activity.retry_policy.non_retryable_error_types
            )
            retry = not non_retryable and activity.retry_policy.allows_another(activity.attempt)
            stage = "retrying" if retry else "failed"
        if recorded_stage is not None and recorded_stage != stage:
            raise self._diverged(
                f"activity {activity.activity_id} ({name!r}) attempt {activity.attempt} was "
                f"recorded {recorded_stage!r} but the retry policy now says {stage!r}"
            )
        if recorded_stage is None:
            self._emit(
                ActivityStep(
                    activity_id=activity.activity_id,
                    activity_name=name,
                    stage=stage,
                    attempt=activity.attempt,
                    result=result if failure is None else None,
                    failure=failure,
                )
            )
        if stage == "completed":
            activity.resolved = True
            if not activity.future.done():
                activity.future.set_result(from_json(activity.definition.fn, result))
        elif stage == "failed":
            activity.resolved = True
            assert failure is not None
            if not activity.future.done():
                activity.future.set_exception(ActivityError(name, activity.attempt, failure))
        else:
            activity.waiting_retry = True
            delay = activity.retry_policy.delay_after(activity.attempt)
            self.start_timer(delay, on_fire=lambda: self._retry(activity))

    def _retry(self, activity: _Activity) -> None:
        if activity.future.done():
            return
        activity.attempt += 1
        activity.waiting_retry = False
        self._emit(
            ActivityStep(
                activity_id=activity.activity_id,
                activity_name=activity.definition.name,
                stage="started",
                attempt=activity.attempt,
            )
        )
        self._request(activity)

    def _deliver(self, event: Event) -> None:
        attrs: Any = event.attributes
        kind = event.type
        if kind in {
            EventType.ACTIVITY_TASK_COMPLETED,
            EventType.ACTIVITY_TASK_RETRYING,
            EventType.ACTIVITY_TASK_FAILED,
        }:
            activity = self._activities.get(attrs.task_id)
            if activity is None:
                raise self._diverged(
                    f"the history resolves activity {attrs.task_id} that the code never started"
                )
            stage = kind.value.removeprefix("ACTIVITY_TASK_").lower()
            result = attrs.result.value if attrs.result is not None else None
            self._resolve_activity(activity, result, attrs.failure, None, recorded_stage=stage)
        elif kind == EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            self._start_update(attrs.update_id, attrs.update_name, attrs.input.value)
        elif kind == EventType.WORKFLOW_EXECUTION_SIGNALED:
            self._signal(attrs.signal_name, attrs.input.value)
        elif kind == EventType.TIMER_FIRED:
            future = self._timers.get(attrs.timer_id)
            if future is not None and not future.done():
                future.set_result(None)
                callback = self._timer_callbacks.pop(attrs.timer_id, None)
                if callback is not None:
                    callback()
        elif kind == EventType.CHILD_WORKFLOW_STARTED:
            child = self._children.get(attrs.child_execution_id)
            if child is not None and not child.started.done():
                child.started.set_result(attrs.child_run_id or "")
        elif kind == EventType.CHILD_WORKFLOW_START_FAILED:
            child = self._children.get(attrs.child_execution_id)
            if child is not None:
                error = ChildWorkflowError(attrs.child_execution_id, None, attrs.failure)
                if not child.started.done():
                    child.started.set_exception(error)
                if not child.result.done():
                    child.result.set_exception(error)
        elif kind == EventType.CHILD_WORKFLOW_CLOSED:
            child = self._children.get(attrs.child_execution_id)
            if child is not None:
                if not child.started.done():
                    child.started.set_result(attrs.child_run_id or "")
                if not child.result.done():
                    if attrs.status == ExecutionStatus.COMPLETED:
                        value = attrs.result.value if attrs.result is not None else None
                        child.result.set_result(value)
                    else:
                        child.result.set_exception(
                            ChildWorkflowError(
                                attrs.child_execution_id, attrs.status, attrs.failure
                            )
                        )
        elif kind == EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED:
            self.cancel_requested = True
            if self._main is not None and not self._main.done():
                self._main.cancel(msg="the workflow was asked to cancel")

    def _signal(self, name: str, value: Any) -> None:
        handler = self.definition.signals.get(name)
        if handler is None:
            log.warning(
                "workflow %s (%s) has no handler for signal %r: buffered",
                self.workflow_name,
                self.execution_id,
                name,
            )
            self._signal_buffer.append((name, value))
            return
        args, kwargs = call_arguments(handler.method, value)
        token = current.set(self)
        try:
            result = handler.method(self.obj, *args, **kwargs)
        finally:
            current.reset(token)
        if asyncio.iscoroutine(result):
            context = contextvars.copy_context()
            context.run(current.set, self)
            self.loop.create_task(result, context=context)

    def _start_update(self, update_id: str, name: str, value: Any) -> None:
        handler = self.definition.updates[name]
        args, kwargs = call_arguments(handler.method, value)

        async def run() -> Any:
            result = handler.method(self.obj, *args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        context = contextvars.copy_context()
        context.run(current.set, self)
        task = self.loop.create_task(run(), context=context)

        def done(t: asyncio.Task[Any]) -> None:
            if self.finished and not self.replaying:
                return
            if t.cancelled() or t.exception() is not None:
                exc = t.exception() if not t.cancelled() else WorkflowCancelledError()
                assert exc is not None
                failure = failure_of(exc)
                self._emit(UpdateCompletedStep(update_id=update_id, failure=failure))
                self._update_results[update_id] = (False, failure.message)
            else:
                result = to_json(t.result())
                self._emit(UpdateCompletedStep(update_id=update_id, result=result))
                self._update_results[update_id] = (True, result)

        task.add_done_callback(done)


class _CurrentInstance:
    def __init__(self, instance: WorkflowInstance) -> None:
        self.instance = instance
        self.token: contextvars.Token[WorkflowInstance] | None = None

    def __enter__(self) -> WorkflowInstance:
        self.token = current.set(self.instance)
        return self.instance

    def __exit__(self, *exc: object) -> None:
        assert self.token is not None
        current.reset(self.token)


def _step_key(step: Step) -> tuple[str, str | None]:
    return (step.kind, getattr(step, "stage", None) if step.kind == "activity" else None)


def _matches(step: Step, event: Event) -> bool:
    attrs: Any = event.attributes
    if step.kind == "custom_task":
        return event.type.value == f"CUSTOM_TASK_{step.stage.upper()}" and (
            attrs.custom_task_id == step.custom_task_id
        )
    if _STEP_EVENT.get(_step_key(step)) != event.type:
        return False
    if isinstance(step, ActivityStep):
        return bool(attrs.task_id == step.activity_id and attrs.activity_name == step.activity_name)
    if isinstance(step, StartTimerStep | CancelTimerStep):
        return bool(attrs.timer_id == step.timer_id)
    if isinstance(step, StartChildStep):
        return bool(
            attrs.child_execution_id == step.child_execution_id
            and attrs.workflow_name == step.workflow_name
        )
    if isinstance(step, MarkerStep):
        return bool(attrs.marker_id == step.marker_id and attrs.name == step.name)
    if isinstance(step, UpdateAcceptedStep | UpdateCompletedStep):
        return bool(attrs.update_id == step.update_id)
    return True


def _describe_step(step: Step) -> str:
    details = {
        k: v
        for k, v in step.model_dump().items()
        if k
        in {
            "activity_id",
            "activity_name",
            "stage",
            "timer_id",
            "child_execution_id",
            "workflow_name",
            "marker_id",
            "name",
            "update_id",
            "custom_task_id",
        }
    }
    return f"{step.kind} {details}"


def _describe_event(event: Event) -> str:
    attrs = event.attributes.model_dump()
    keys = (
        "task_id",
        "activity_name",
        "timer_id",
        "child_execution_id",
        "marker_id",
        "name",
        "update_id",
        "custom_task_id",
    )
    return f"{event.type.value} {{{', '.join(f'{k}: {attrs[k]!r}' for k in keys if k in attrs)}}}"
