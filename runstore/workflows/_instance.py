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
that resolve something (an activity's result, an accepted update) and the worker's own
decisions (an activity's deadline timer) are applied whenever the code is idle and such
an event is next, exactly as the live worker applied them.

The layers: `InstanceCore` (_machine.py: loop, steps, matching), `ActivityMachine`
(_activity_machine.py: activities), this module (history, inputs, handlers, children).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, cast

from runstore.workflows._activity_machine import ActivityMachine, ActivityRequest
from runstore.workflows._definitions import call_arguments, to_json
from runstore.workflows._errors import ChildWorkflowError, WorkflowCancelledError, failure_of
from runstore.workflows._machine import InstanceCore
from runstore.workflows._machine import current as _current
from runstore.workflows._replay_rules import (
    ACTIVITY_OUTCOMES,
    FINAL_EVENTS,
    INPUTS,
    OPENS_ATTEMPT,
    RESOLUTIONS,
    describe_event,
)
from schemas.commands import CustomTaskStep, MarkerStep, StartChildStep, UpdateAcceptedStep
from schemas.commands import UpdateCompletedStep as _UpdateCompleted
from schemas.common import ExecutionStatus, ParentClosePolicy
from schemas.events import Event, EventType

__all__ = ["ActivityRequest", "WorkflowInstance", "current"]

log = logging.getLogger("runstore.workflows")

current: contextvars.ContextVar[InstanceCore] = _current


class _Child:
    def __init__(self, started: asyncio.Future[str], result: asyncio.Future[Any]) -> None:
        self.started = started
        self.result = result


class WorkflowInstance(ActivityMachine):
    """The live object of one run of one workflow, stepped by the worker."""

    def _setup(self) -> None:
        super()._setup()
        self._children: dict[str, _Child] = {}
        self._signal_buffer: list[tuple[str, Any]] = []
        self._update_results: dict[str, tuple[bool, Any]] = {}
        self._undelivered: deque[Event] = deque()
        self._reset_custom_tasks: set[tuple[str, str]] = set()

    @staticmethod
    def of_current() -> WorkflowInstance:
        return cast(WorkflowInstance, current.get())

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
        if first.type == EventType.WORKFLOW_TASK_COMPLETED:
            task_seq = first.attributes.task_seq
            self._replay_task(task_seq, events[1:])
            return
        if any(e.type in OPENS_ATTEMPT for e in events):
            # Activity and custom-task events in the commit that opens the run are a
            # reset's copies of the old run's (docs/domain.md, Reset).
            self._take_reset_copies(events)
            self._reset_custom_tasks.update(
                (e.attributes.custom_task_id, e.type.value.removeprefix("CUSTOM_TASK_").lower())  # type: ignore[union-attr]
                for e in events
                if e.type.value.startswith("CUSTOM_TASK_")
            )
            events = [e for e in events if not e.type.value.startswith("ACTIVITY_TASK_")]
        for event in events:
            if event.type in INPUTS or event.type in RESOLUTIONS:
                if event.type == EventType.TIMER_FIRED:
                    self._note_deadline_fired(event)
                self._undelivered.append(event)
            elif event.type in FINAL_EVENTS:
                self.finished = True
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
        self._expected = deque(e for e in events if e.type not in FINAL_EVENTS)
        closes = any(e.type in FINAL_EVENTS for e in events)
        self._view_seq = task_seq
        try:
            self._deliver_inputs(up_to=task_seq)
            while self._expected and not self.finished:
                head = self._expected.popleft()
                self.now_ns = max(self.now_ns, head.timestamp_ns)
                if head.type in RESOLUTIONS:
                    self._deliver(head)
                    self._run()
                elif head.type != EventType.TIMER_STARTED or not self._deadline_event(head):
                    raise self._diverged(
                        f"the history recorded {describe_event(head)} here, but the code did "
                        f"not issue it (workflow {self.workflow_name!r}, execution "
                        f"{self.execution_id!r})"
                    )
        finally:
            self._view_seq = None
        self._expected.clear()
        if closes:
            self.finished = True

    # --- going live -------------------------------------------------------------------

    def go_live(self) -> None:
        """Replay is over: deliver the inputs the code has not seen, then run it on."""
        self.replaying = False
        self.request_unreported_attempts()
        self._deliver_inputs(up_to=None)

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

    def update_result(self, update_id: str) -> tuple[bool, Any] | None:
        """(ok, result or failure message) once the update's handler has finished."""
        return self._update_results.pop(update_id, None)

    # --- the code's commands (called from workflow code through `workflow.*`) ---------

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

    def side_effect(self, name: str, compute: Any) -> Any:
        marker_id = self.next_id("m")
        if self.replaying:
            recorded = self._emit(MarkerStep(marker_id=marker_id, name=name, value=None))
            return recorded.attributes.value.value  # type: ignore[union-attr]
        value = to_json(compute())
        self._emit(MarkerStep(marker_id=marker_id, name=name, value=value))
        return value

    def custom_task(self, step: CustomTaskStep) -> None:
        copied = (step.custom_task_id, step.stage)
        if copied in self._reset_custom_tasks:
            self._reset_custom_tasks.discard(copied)  # a reset carried it over already
            return
        self._emit(step)

    # --- inputs ------------------------------------------------------------------------

    def _deliver(self, event: Event) -> None:
        attrs: Any = event.attributes
        kind = event.type
        if kind in ACTIVITY_OUTCOMES:
            self._deliver_activity(event)
        elif kind == EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            self._start_update(attrs.update_id, attrs.update_name, attrs.input.value)
        elif kind == EventType.WORKFLOW_EXECUTION_SIGNALED:
            self._signal(attrs.signal_name, attrs.input.value)
        elif kind == EventType.TIMER_FIRED:
            if not self._deadline_fired(attrs.timer_id):
                self._timer_fired(attrs.timer_id)
        elif kind in {
            EventType.CHILD_WORKFLOW_STARTED,
            EventType.CHILD_WORKFLOW_START_FAILED,
            EventType.CHILD_WORKFLOW_CLOSED,
        }:
            self._child_report(event)
        elif kind == EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED:
            self.cancel_requested = True
            if self._main is not None and not self._main.done():
                self._main.cancel(msg="the workflow was asked to cancel")

    def _child_report(self, event: Event) -> None:
        attrs: Any = event.attributes
        child = self._children.get(attrs.child_execution_id)
        if child is None:
            return
        if event.type == EventType.CHILD_WORKFLOW_START_FAILED:
            error = ChildWorkflowError(attrs.child_execution_id, None, attrs.failure)
            for future in (child.started, child.result):
                if not future.done():
                    future.set_exception(error)
            return
        if not child.started.done():
            child.started.set_result(attrs.child_run_id or "")
        if event.type != EventType.CHILD_WORKFLOW_CLOSED or child.result.done():
            return
        if attrs.status == ExecutionStatus.COMPLETED:
            child.result.set_result(attrs.result.value if attrs.result is not None else None)
        else:
            child.result.set_exception(
                ChildWorkflowError(attrs.child_execution_id, attrs.status, attrs.failure)
            )

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
        with self._as_current():
            result = handler.method(self.obj, *args, **kwargs)
        if asyncio.iscoroutine(result):
            self._create_task(result)

    def _start_update(self, update_id: str, name: str, value: Any) -> None:
        handler = self.definition.updates[name]
        args, kwargs = call_arguments(handler.method, value)

        async def run() -> Any:
            result = handler.method(self.obj, *args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        task = self._create_task(run())

        def done(t: asyncio.Task[Any]) -> None:
            if self.finished and not self.replaying:
                return
            if t.cancelled() or t.exception() is not None:
                exc = t.exception() if not t.cancelled() else WorkflowCancelledError()
                assert exc is not None
                failure = failure_of(exc)
                self._emit(_UpdateCompleted(update_id=update_id, failure=failure))
                self._update_results[update_id] = (False, failure.message)
            else:
                result = to_json(t.result())
                self._emit(_UpdateCompleted(update_id=update_id, result=result))
                self._update_results[update_id] = (True, result)

        task.add_done_callback(done)
