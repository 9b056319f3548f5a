"""Builders for domain tests: commands with a fixed envelope, and a `Stream` grown by
running commands through the real `decide`/`evolve`, as the engine grows one."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.commands import (
    ActivityReportPayload,
    CancelExecution,
    Command,
    CompleteExecution,
    CompletePayload,
    ContinueAsNew,
    ContinueAsNewPayload,
    CustomTaskReportPayload,
    FailExecution,
    FailPayload,
    ReasonPayload,
    RecordActivityTask,
    RecordCustomTask,
    ResetExecution,
    ResetPayload,
    RetryExecution,
    SignalExecution,
    SignalPayload,
    StartWorkflow,
    StartWorkflowPayload,
    TerminateExecution,
    TimeOutExecution,
    TimerPayload,
)
from schemas.common import ExecutionStatus, Failure, RetryPolicy
from schemas.events import (
    Event,
    EventType,
)
from services.engine.domain import (
    Context,
    ExecutionState,
    Rejected,
    decide,
    fold,
)

EXEC = "exec-1"
T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000
ISSUED = datetime(2024, 1, 1, tzinfo=UTC)
BOOM = Failure(message="boom", type="ValueError")
_ids = itertools.count(1)


# --- commands ---------------------------------------------------------------------------


def envelope(execution_id: str, user_id: str | None) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{next(_ids)}",
        "execution_id": execution_id,
        "issued_at": ISSUED,
        "user_id": user_id,
    }


def start(execution_id: str = EXEC, user_id: str | None = "alice", **payload: Any) -> StartWorkflow:
    payload.setdefault("workflow_name", "order")
    return StartWorkflow(**envelope(execution_id, user_id), payload=StartWorkflowPayload(**payload))


def cancel(reason: str | None = "no longer needed") -> CancelExecution:
    return CancelExecution(**envelope(EXEC, "bob"), payload=ReasonPayload(reason=reason))


def terminate(reason: str | None = "stuck") -> TerminateExecution:
    return TerminateExecution(**envelope(EXEC, "bob"), payload=ReasonPayload(reason=reason))


def signal(name: str = "approve", value: Any = None) -> SignalExecution:
    return SignalExecution(**envelope(EXEC, "carol"), payload=SignalPayload(name=name, input=value))


def reset(event_id: int, reason: str | None = "bad deploy", **flags: bool) -> ResetExecution:
    return ResetExecution(
        **envelope(EXEC, "ops"), payload=ResetPayload(event_id=event_id, reason=reason, **flags)
    )


def complete(run_id: str, result: Any = None) -> CompleteExecution:
    return CompleteExecution(
        **envelope(EXEC, None), payload=CompletePayload(run_id=run_id, result=result)
    )


def fail(run_id: str, retryable: bool = True) -> FailExecution:
    return FailExecution(
        **envelope(EXEC, None),
        payload=FailPayload(run_id=run_id, failure=BOOM, retryable=retryable),
    )


def continue_as_new(run_id: str, **payload: Any) -> ContinueAsNew:
    return ContinueAsNew(
        **envelope(EXEC, None), payload=ContinueAsNewPayload(run_id=run_id, **payload)
    )


def activity(run_id: str, stage: str = "completed", task_id: str = "act-1", **kw: Any) -> Any:
    if stage in {"retrying", "failed"}:
        kw.setdefault("failure", BOOM)  # the contract requires one for these stages
    return RecordActivityTask(
        **envelope(EXEC, None),
        payload=ActivityReportPayload(
            run_id=run_id, stage=stage, task_id=task_id, activity_name="charge", **kw
        ),
    )


def custom_task(run_id: str, stage: str = "completed", task_id: str = "ct-1", **kw: Any) -> Any:
    if stage == "failed":
        kw.setdefault("failure", BOOM)  # the contract requires one for this stage
    return RecordCustomTask(
        **envelope(EXEC, None),
        payload=CustomTaskReportPayload(
            run_id=run_id, stage=stage, custom_task_id=task_id, custom_task_type="review", **kw
        ),
    )


def time_out(run_id: str) -> TimeOutExecution:
    return TimeOutExecution(**envelope(EXEC, None), payload=TimerPayload(run_id=run_id))


def retry(run_id: str, attempt: int | None) -> RetryExecution:
    return RetryExecution(
        **envelope(EXEC, None), payload=TimerPayload(run_id=run_id, attempt=attempt)
    )


# --- a stream built by running commands -----------------------------------------------


@dataclass
class Stream:
    """One execution's stream, grown by `decide` + `evolve` exactly as the engine does.

    Commit n (1-based) is decided at T0 + n s with new_run_id "run-n",
    new_execution_id "next-n" and successor_run_id "succ-n".
    """

    events: list[Event] = field(default_factory=list)
    state: ExecutionState | None = None

    @property
    def run(self) -> str:
        assert self.state is not None
        return self.state.run_id

    def run_history(self, run_id: str | None = None) -> list[Event]:
        wanted = run_id or self.run
        return [e for e in self.events if e.run_id == wanted]

    def ctx(self, **overrides: Any) -> Context:
        n = (self.state.seq if self.state else 0) + 1
        values: dict[str, Any] = {
            "now_ns": T0 + n * SECOND,
            "new_run_id": f"run-{n}",
            "new_execution_id": f"next-{n}",
            "successor_run_id": f"succ-{n}",
            "history": tuple(self.run_history()) if self.state else (),
        }
        values.update(overrides)
        return Context(**values)

    def when(self, cmd: Command, **ctx: Any) -> list[Event]:
        """Decide and apply one command; returns the commit's events."""
        events = decide(self.state, cmd, self.ctx(**ctx))
        self.events.extend(events)
        self.state = fold(events, self.state)
        return events

    def given(self, *commands: Callable[[Stream], Command] | Command) -> Stream:
        """Apply commands; a callable gets the stream (to name the current run)."""
        for item in commands:
            self.when(item(self) if callable(item) else item)
        return self

    def rejection(self, cmd: Command, **ctx: Any) -> Rejected:
        with pytest.raises(Rejected) as info:
            decide(self.state, cmd, self.ctx(**ctx))
        return info.value

    @property
    def current(self) -> ExecutionState:
        assert self.state is not None, "no command accepted yet"
        return self.state

    @property
    def status(self) -> ExecutionStatus:
        return self.current.status


def running(**payload: Any) -> Stream:
    return Stream().given(start(**payload))


def with_retries(max_attempts: int = 3, **policy: Any) -> Stream:
    return running(retry_policy=RetryPolicy(max_attempts=max_attempts, **policy))


def retrying() -> Stream:
    return with_retries().given(lambda s: fail(s.run))


def closed_as(status: ExecutionStatus) -> Stream:
    """A one-run stream whose run ended with `status`."""
    closers: dict[ExecutionStatus, Callable[[Stream], Command]] = {
        ExecutionStatus.COMPLETED: lambda s: complete(s.run, 1),
        ExecutionStatus.FAILED: lambda s: fail(s.run),
        ExecutionStatus.CANCELED: lambda s: cancel(),
        ExecutionStatus.TERMINATED: lambda s: terminate(),
        ExecutionStatus.TIMED_OUT: lambda s: time_out(s.run),
        ExecutionStatus.CONTINUED_AS_NEW: lambda s: continue_as_new(s.run),
    }
    stream = running().given(closers[status])
    assert stream.status is status
    return stream


TERMINAL = sorted((s for s in ExecutionStatus if s.is_terminal), key=lambda s: s.value)


def types(events: list[Event]) -> list[EventType]:
    return [e.type for e in events]


def attrs(event: Event) -> Any:
    """The event's attributes, untyped: each test knows which event it holds."""
    return event.attributes
