"""Durable timers: which timers an event starts or stops, and the command a due timer fires.

One pure function, `timer_changes(event)`, is the whole contract between the event stream
and the timers service (docs/worker-protocol.md, "Timers"). No clock, no I/O: the service
stores what it returns and fires each timer at its `fire_at_ns`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from schemas.commands import (
    Command,
    FireTimer,
    FireTimerPayload,
    RetryExecution,
    TimeOutExecution,
    TimerPayload,
)
from schemas.common import FrozenModel
from schemas.events import (
    CancelRequested,
    Event,
    ExecutionStarted,
    RetryScheduled,
    RetryStarted,
    TimerEvent,
    TimerStarted,
    WorkflowTaskFailed,
    closes_run,
)

EXECUTION_TIMEOUT = "execution-timeout"
"""Timer id of a run's execution timeout."""
CANCEL_DEADLINE = "cancel-deadline"
"""Timer id of the end of a cancel request's grace period."""

_MAX_COMMAND_ID = 200  # schemas.commands._Envelope.command_id


class TimerAction(StrEnum):
    """Which command a due timer sends."""

    TIME_OUT = "TimeOutExecution"
    RETRY = "RetryExecution"
    FIRE = "FireTimer"


class Timer(FrozenModel):
    """A pending deadline of one run."""

    execution_id: str
    run_id: str
    timer_id: str
    fire_at_ns: int
    action: TimerAction
    attempt: int | None = Field(default=None, ge=1)
    """For RETRY: the attempt the retry starts."""

    @property
    def key(self) -> str:
        """Unique per pending timer: a run has one timer of a given id at a time."""
        return timer_key(self.execution_id, self.run_id, self.timer_id)

    @property
    def command_id(self) -> str:
        """Deterministic per firing: fired twice (a crash between firing and recording it),
        applied once, because the engine applies a command id at most once."""
        plain = f"timer:{self.execution_id}:{self.run_id}:{self.timer_id}:{self.fire_at_ns}"
        if len(plain) <= _MAX_COMMAND_ID:
            return plain
        # Long execution ids would overflow the envelope's limit: a digest of the same text.
        return "timer:" + hashlib.sha256(plain.encode()).hexdigest()


def timer_key(execution_id: str, run_id: str, timer_id: str) -> str:
    return f"{execution_id}:{run_id}:{timer_id}"


class TimerChanges(FrozenModel):
    """What one event does to the timers of its execution."""

    start: tuple[Timer, ...] = ()
    stop: tuple[str, ...] = ()
    """Timer ids of the event's run that are no longer pending."""
    close_runs: tuple[str, ...] = ()
    """Runs that closed: every timer of theirs is dropped."""

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop or self.close_runs)


_NOTHING = TimerChanges()


def _seconds_to_ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


def timer_changes(event: Event) -> TimerChanges:
    """The timers `event` starts and stops (docs/worker-protocol.md, "Timers").

    The execution timeout is set when a run starts and spans all its retry attempts (the
    engine's `ExecutionState.deadline_ns`: run start + timeout), so a RETRY_STARTED starts
    no new one. A timer started again under the same id replaces the pending one.
    """
    if isinstance(event, ExecutionStarted):
        timeout = event.attributes.execution_timeout_seconds
        if timeout is None:
            return _NOTHING
        timer = Timer(
            execution_id=event.execution_id,
            run_id=event.run_id,
            timer_id=EXECUTION_TIMEOUT,
            fire_at_ns=event.timestamp_ns + _seconds_to_ns(timeout),
            action=TimerAction.TIME_OUT,
        )
        return TimerChanges(start=(timer,))
    if isinstance(event, RetryScheduled):
        failed = event.attributes.failed_attempt
        timer = Timer(
            execution_id=event.execution_id,
            run_id=event.run_id,
            timer_id=f"retry:{failed}",
            fire_at_ns=event.attributes.retry_at_ns,
            action=TimerAction.RETRY,
            attempt=failed + 1,
        )
        return TimerChanges(start=(timer,))
    if isinstance(event, RetryStarted):
        return TimerChanges(stop=(f"retry:{event.attributes.attempt - 1}",))
    if isinstance(event, TimerStarted):
        return TimerChanges(
            start=(_fire_timer(event, event.attributes.timer_id, event.attributes.fire_at_ns),)
        )
    if isinstance(event, TimerEvent):  # TIMER_FIRED / TIMER_CANCELED
        return TimerChanges(stop=(event.attributes.timer_id,))
    if isinstance(event, WorkflowTaskFailed):
        retry_at = event.attributes.retry_at_ns
        if retry_at is None:
            return _NOTHING
        return TimerChanges(start=(_fire_timer(event, f"workflow-task:{event.seq}", retry_at),))
    if isinstance(event, CancelRequested):
        deadline = event.attributes.cancel_deadline_ns
        return TimerChanges(start=(_fire_timer(event, CANCEL_DEADLINE, deadline),))
    if closes_run(event):
        return TimerChanges(close_runs=(event.run_id,))
    return _NOTHING


def _fire_timer(event: Event, timer_id: str, fire_at_ns: int) -> Timer:
    return Timer(
        execution_id=event.execution_id,
        run_id=event.run_id,
        timer_id=timer_id,
        fire_at_ns=fire_at_ns,
        action=TimerAction.FIRE,
    )


def firing_command(timer: Timer, issued_at: datetime) -> Command:
    """The command a due timer sends to the engine (keyed by its execution id)."""
    if timer.action is TimerAction.TIME_OUT:
        return TimeOutExecution(
            command_id=timer.command_id,
            execution_id=timer.execution_id,
            issued_at=issued_at,
            payload=TimerPayload(run_id=timer.run_id),
        )
    if timer.action is TimerAction.RETRY:
        return RetryExecution(
            command_id=timer.command_id,
            execution_id=timer.execution_id,
            issued_at=issued_at,
            payload=TimerPayload(run_id=timer.run_id, attempt=timer.attempt),
        )
    return FireTimer(
        command_id=timer.command_id,
        execution_id=timer.execution_id,
        issued_at=issued_at,
        payload=FireTimerPayload(run_id=timer.run_id, timer_id=timer.timer_id),
    )
