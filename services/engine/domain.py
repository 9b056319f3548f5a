"""The pure domain of an execution: `decide` turns a command into events, `evolve` folds them.

One event stream per execution id. `decide(state, command, context)` either raises
`Rejected` (a valid command the domain refuses, with a stable code) or returns the events
of ONE commit, fully stamped (seq, index, event_id, event_number, run_id, timestamps);
the engine appends them as they are. `evolve` is the only way state changes, so a
snapshot, a fold of all commits and the live engine always agree.

No clock, no uuid, no I/O, no randomness: time and fresh ids come in through `Context`.
The semantics are written down in docs/domain.md; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict

from pydantic import Field, JsonValue

from schemas.commands import (
    DEFAULT_CANCEL_GRACE_SECONDS,
    CancelExecution,
    Command,
    CompleteExecution,
    ContinueAsNew,
    CustomTaskReportPayload,
    CustomTaskStep,
    FailExecution,
    IdReusePolicy,
    RecordActivityTask,
    RecordCustomTask,
    ResetExecution,
    RetryExecution,
    SignalExecution,
    StartWorkflow,
    StartWorkflowPayload,
    TerminateExecution,
    TimeOutExecution,
)
from schemas.common import ExecutionStatus, Failure, FrozenModel, ParentClosePolicy, Payload
from schemas.events import (
    STATUS_AFTER,
    ActivityTaskAttributes,
    ActivityTaskEvent,
    CanceledAttributes,
    CancelRequested,
    CancelRequestedAttributes,
    CompletedAttributes,
    ContinuedAsNewAttributes,
    CustomTaskAttributes,
    CustomTaskEvent,
    Event,
    EventType,
    ExecutionCanceled,
    ExecutionCompleted,
    ExecutionContinuedAsNew,
    ExecutionFailed,
    ExecutionStarted,
    ExecutionTerminated,
    ExecutionTimedOut,
    FailedAttributes,
    RetryScheduled,
    RetryScheduledAttributes,
    RetryStarted,
    RetryStartedAttributes,
    RunReset,
    RunResetAttributes,
    SignaledAttributes,
    SignalReceived,
    StartedAttributes,
    TerminatedAttributes,
    TimedOutAttributes,
    event_id_for,
)
from schemas.outcomes import RejectionCode
from services.common.clock import ns_to_datetime

__all__ = [
    "Context",
    "ExecutionState",
    "InvalidHistory",
    "Rejected",
    "decide",
    "evolve",
    "fold",
    "successor_commands",
    "task_id_for",
]

_OPEN_STATUSES = frozenset({ExecutionStatus.RUNNING, ExecutionStatus.RETRYING_AFTER_ERROR})


# --- inputs and outputs ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """Everything `decide` may not make up itself: the time and fresh ids."""

    now_ns: int
    """Unix time in ns; the only clock the domain sees."""
    new_run_id: str
    """Run id for a run this command opens (StartWorkflow without payload.run_id, reset)."""
    new_execution_id: str
    """Successor execution id for a ContinueAsNew whose payload names none."""
    successor_run_id: str
    """Run id of a continue-as-new successor's first run."""
    history: tuple[Event, ...] = ()
    """The latest run's events, oldest first; the engine fills it only for ResetExecution."""


class ExecutionState(FrozenModel):
    """What the domain knows about one execution after its last commit.

    The engine stores it as a snapshot (`model_dump(mode="json", exclude_none=True)`), so
    every field is plain data, every field that may be None defaults to None, and the shape
    only grows with defaults: old snapshots must stay loadable.
    Everything is about the LATEST run, except `seq` and `run_count`.
    """

    execution_id: str
    seq: int = Field(ge=1)
    """Seq of the last commit folded in."""
    run_id: str
    """The latest run: the only one that can be active."""
    run_event_count: int = Field(ge=1)
    """Events in the latest run's history (= event_number of its last event)."""
    run_count: int = Field(ge=1)
    """Runs opened under this execution id (start, start-again, reset)."""
    status: ExecutionStatus
    workflow_name: str
    root_execution_id: str
    parent_execution_id: str | None = None
    attempt: int = Field(default=1, ge=1)
    """Attempt of the latest run; grows by one at each RETRY_STARTED."""
    started: StartedAttributes
    """The latest run's STARTED attributes: retry policy, timeout, user, deployment …"""
    started_at_ns: int
    closed_at_ns: int | None = None
    result: Payload | None = None
    """Result of a COMPLETED run."""
    last_failure: Failure | None = None
    """Failure of the last failed attempt (RETRY_SCHEDULED or FAILED)."""
    retry_at_ns: int | None = None
    """When the next attempt is due, while RETRYING_AFTER_ERROR."""
    reset_from_run_id: str | None = None
    """Set when the latest run was opened by a reset of this run."""
    reset_event_id: int | None = None
    successor_execution_id: str | None = None
    """Set when the latest run CONTINUED_AS_NEW."""
    successor_run_id: str | None = None
    # The worker protocol (docs/worker-protocol.md), all about the latest run; each
    # defaults to "nothing yet", so snapshots written before it load unchanged.
    workflow_task_seq: int | None = None
    """Seq of the run's last accepted CompleteWorkflowTask; None: no worker advanced it."""
    workflow_task_failures: int = Field(default=0, ge=0)
    """Consecutive FailWorkflowTask since the last accepted CompleteWorkflowTask."""
    timers: dict[str, int] = Field(default_factory=dict)
    """Pending timers: id -> fire_at_ns (the code's, `workflow-task:{seq}`, `cancel-deadline`)."""
    activities: dict[str, int] = Field(default_factory=dict)
    """Activities started and not yet ended: activity id -> attempt."""
    children: dict[str, ParentClosePolicy] = Field(default_factory=dict)
    """Children initiated and not yet closed: child execution id -> parent-close policy.
    Kept after the run closes: the engine applies the policies from it."""
    updates: dict[str, str] = Field(default_factory=dict)
    """Updates accepted and not yet completed: update id -> name."""
    cancel_deadline_ns: int | None = None
    """Set by a cancel request: when the engine cancels the run itself."""

    @property
    def is_open(self) -> bool:
        return self.status in _OPEN_STATUSES

    @property
    def deadline_ns(self) -> int | None:
        """When the latest run times out (its own start + execution timeout), if it has one."""
        timeout = self.started.execution_timeout_seconds
        if timeout is None:
            return None
        return self.started_at_ns + _seconds_to_ns(timeout)


class Rejected(Exception):
    """A valid command the domain refuses; nothing is appended."""

    def __init__(self, code: RejectionCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class InvalidHistory(ValueError):
    """An event that cannot follow the state: the stream is corrupt or out of order."""


def task_id_for(run_id: str, event_number: int) -> str:
    """task_id of a workflow-level event: unique per execution, stable across re-delivery."""
    return f"{run_id}:{event_number}"


def _task_id(envelope: _EnvelopeFields) -> str:
    return task_id_for(envelope["run_id"], envelope["event_number"])


# --- decide ---------------------------------------------------------------------------


def decide(state: ExecutionState | None, cmd: Command, ctx: Context) -> list[Event]:
    """The events of one commit that apply `cmd` to `state`; raises `Rejected`.

    All returned events share seq = state.seq + 1 (1 for a new stream).
    """
    if state is not None and cmd.execution_id != state.execution_id:
        raise ValueError(
            f"command for execution {cmd.execution_id!r} applied to {state.execution_id!r}"
        )
    decider = _DECIDERS.get(type(cmd))
    if decider is None:
        raise Rejected(RejectionCode.INVALID_TRANSITION, f"{cmd.type}: not supported yet")
    return decider(state, cmd, ctx)


class _EnvelopeFields(TypedDict):
    event_id: str
    execution_id: str
    seq: int
    index: int
    event_number: int
    run_id: str
    workflow_name: str
    root_execution_id: str
    parent_execution_id: str | None
    timestamp_ns: int
    command_id: str


@dataclass(slots=True)
class _Commit:
    """Stamps the events of one commit: one seq, index 0..n-1, event_number per run."""

    execution_id: str
    seq: int
    command_id: str
    now_ns: int
    run_id: str = ""
    workflow_name: str = ""
    root_execution_id: str = ""
    parent_execution_id: str | None = None
    last_event_number: int = 0
    events: list[Event] = field(default_factory=list)

    @classmethod
    def after(cls, state: ExecutionState | None, cmd: Command, ctx: Context) -> _Commit:
        """The next commit; it continues the latest run until `open_run` is called."""
        if state is None:
            return cls(cmd.execution_id, 1, cmd.command_id, ctx.now_ns)
        return cls(
            execution_id=state.execution_id,
            seq=state.seq + 1,
            command_id=cmd.command_id,
            now_ns=ctx.now_ns,
            run_id=state.run_id,
            workflow_name=state.workflow_name,
            root_execution_id=state.root_execution_id,
            parent_execution_id=state.parent_execution_id,
            last_event_number=state.run_event_count,
        )

    def open_run(
        self, run_id: str, workflow_name: str, root_execution_id: str, parent: str | None
    ) -> None:
        self.run_id = run_id
        self.workflow_name = workflow_name
        self.root_execution_id = root_execution_id
        self.parent_execution_id = parent
        self.last_event_number = 0

    def stamp(self) -> _EnvelopeFields:
        """The envelope of the next event; call `add` with that event before stamping again."""
        assert self.run_id, "open_run first"
        self.last_event_number += 1
        index = len(self.events)
        return _EnvelopeFields(
            event_id=event_id_for(self.execution_id, self.seq, index),
            execution_id=self.execution_id,
            seq=self.seq,
            index=index,
            event_number=self.last_event_number,
            run_id=self.run_id,
            workflow_name=self.workflow_name,
            root_execution_id=self.root_execution_id,
            parent_execution_id=self.parent_execution_id,
            timestamp_ns=self.now_ns,
            command_id=self.command_id,
        )

    def add(self, event: Event) -> None:
        assert event.index == len(self.events), "stamp() once per event, in order"
        self.events.append(event)

    def restamp(self, event: Event) -> None:
        """Append a copy of an older event, moved to this commit's current run and position."""
        self.add(event.model_copy(update=dict(self.stamp())))

    def done(self) -> list[Event]:
        assert self.events, "a commit holds at least one event"
        return self.events


# --- guards: each raises the one rejection that names what is wrong --------------------


def _describe(state: ExecutionState) -> str:
    return f"execution {state.execution_id!r} (run {state.run_id!r}, {state.status.value})"


def _require_state(state: ExecutionState | None, cmd: Command) -> ExecutionState:
    if state is None:
        raise Rejected(
            RejectionCode.EXECUTION_NOT_FOUND,
            f"{cmd.type}: execution {cmd.execution_id!r} not found",
        )
    return state


def _require_open(state: ExecutionState | None, cmd: Command) -> ExecutionState:
    state = _require_state(state, cmd)
    if not state.is_open:
        raise Rejected(
            RejectionCode.EXECUTION_ALREADY_CLOSED,
            f"{cmd.type}: {_describe(state)} is already closed",
        )
    return state


def _require_latest_open_run(
    state: ExecutionState | None, cmd: Command, run_id: str
) -> ExecutionState:
    """Timers and worker reports name their run: a stale run must not touch the latest one."""
    state = _require_state(state, cmd)
    if run_id != state.run_id:
        raise Rejected(
            RejectionCode.RUN_NOT_ACTIVE,
            f"{cmd.type}: run {run_id!r} is not the latest run of {_describe(state)}",
        )
    if not state.is_open:
        raise Rejected(
            RejectionCode.EXECUTION_ALREADY_CLOSED,
            f"{cmd.type}: {_describe(state)} is already closed",
        )
    return state


def _require_running_run(state: ExecutionState | None, cmd: Command, run_id: str) -> ExecutionState:
    """Worker reports: while a retry is pending no worker should be running the workflow."""
    state = _require_latest_open_run(state, cmd, run_id)
    if state.status is ExecutionStatus.RETRYING_AFTER_ERROR:
        raise Rejected(
            RejectionCode.RUN_NOT_ACTIVE,
            f"{cmd.type}: {_describe(state)} waits for attempt {state.attempt + 1}; "
            f"no worker runs it now",
        )
    return state


def _require_fresh_run_id(state: ExecutionState | None, cmd: Command, run_id: str) -> None:
    # A run id must open a new run; reusing the latest would merge two histories.
    if state is not None and run_id == state.run_id:
        raise Rejected(
            RejectionCode.INVALID_TRANSITION,
            f"{cmd.type}: run id {run_id!r} is already the latest run of {_describe(state)}",
        )


# --- deciders, one per command type ---------------------------------------------------


def _decide_start(state: ExecutionState | None, cmd: StartWorkflow, ctx: Context) -> list[Event]:
    if state is not None:
        _check_id_reuse(state, cmd)
    p = cmd.payload
    run_id = p.run_id or ctx.new_run_id
    _require_fresh_run_id(state, cmd, run_id)
    commit = _Commit.after(state, cmd, ctx)
    root = cmd.root_execution_id
    commit.open_run(run_id, p.workflow_name, root, p.parent_execution_id)
    env = commit.stamp()
    # The hot deciders build their events from the validated command without validating
    # again (FrozenModel.trusted; tests validate them as well).
    attributes = StartedAttributes.trusted(
        task_id=_task_id(env),
        workflow_name=p.workflow_name,
        input=Payload.trusted(type="json", value=p.input, encoding_options=None),
        display_name=p.display_name,
        attempt=1,
        deployment_name=p.deployment_name,
        user_id=cmd.user_id,
        internal=p.internal,
        execution_timeout_seconds=p.execution_timeout_seconds,
        retry_policy=p.retry_policy,
        search_keys=p.search_keys,
        workflow_tags=p.workflow_tags,
        continued_from_execution_id=p.continued_from_execution_id,
        parent_run_id=p.parent_run_id,
        parent_close_policy=p.parent_close_policy,
        cancel_grace_seconds=p.cancel_grace_seconds,
    )
    commit.add(
        ExecutionStarted.trusted(
            **env, type=EventType.WORKFLOW_EXECUTION_STARTED, attributes=attributes
        )
    )
    return commit.done()


def _check_id_reuse(state: ExecutionState, cmd: StartWorkflow) -> None:
    if state.is_open:
        raise Rejected(
            RejectionCode.EXECUTION_ALREADY_RUNNING,
            f"StartWorkflow: {_describe(state)} is still open",
        )
    policy = cmd.payload.id_reuse_policy
    if policy is IdReusePolicy.REJECT_DUPLICATE:
        raise Rejected(
            RejectionCode.EXECUTION_ID_REUSE_REJECTED,
            f"StartWorkflow: {_describe(state)} exists and the policy is {policy.value}",
        )
    # CONTINUED_AS_NEW is a successful end too (the workflow asked for it), so
    # "failed only" refuses it like COMPLETED.
    if policy is IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY and state.status in (
        ExecutionStatus.COMPLETED,
        ExecutionStatus.CONTINUED_AS_NEW,
    ):
        raise Rejected(
            RejectionCode.EXECUTION_ID_REUSE_REJECTED,
            f"StartWorkflow: {_describe(state)} ended successfully and the policy is "
            f"{policy.value}",
        )


def _decide_cancel(state: ExecutionState | None, cmd: CancelExecution, ctx: Context) -> list[Event]:
    state = _require_open(state, cmd)
    commit = _Commit.after(state, cmd, ctx)
    if state.workflow_task_seq is None or state.status is ExecutionStatus.RETRYING_AFTER_ERROR:
        # No code is running it (no worker advanced the run, or it waits for a retry):
        # nothing could clean up, so cancel at once.
        cancel_run(commit, state, cmd.payload.reason)
        return commit.done()
    if state.cancel_deadline_ns is not None:
        raise Rejected(
            RejectionCode.INVALID_TRANSITION,
            f"CancelExecution: {_describe(state)} is already asked to cancel",
        )
    grace = state.started.cancel_grace_seconds
    if grace is None:
        grace = DEFAULT_CANCEL_GRACE_SECONDS
    env = commit.stamp()
    requested = CancelRequestedAttributes(
        reason=cmd.payload.reason,
        cancel_deadline_ns=ctx.now_ns + _seconds_to_ns(grace),
        user_id=cmd.user_id,
    )
    commit.add(CancelRequested(**env, attributes=requested))
    return commit.done()


def cancel_run(commit: _Commit, state: ExecutionState, reason: str | None) -> None:
    """Add WORKFLOW_EXECUTION_CANCELED to `commit`."""
    env = commit.stamp()
    attributes = CanceledAttributes.trusted(
        task_id=_task_id(env), reason=reason, attempt=state.attempt
    )
    commit.add(
        ExecutionCanceled.trusted(
            **env, type=EventType.WORKFLOW_EXECUTION_CANCELED, attributes=attributes
        )
    )


def _decide_terminate(
    state: ExecutionState | None, cmd: TerminateExecution, ctx: Context
) -> list[Event]:
    state = _require_open(state, cmd)
    commit = _Commit.after(state, cmd, ctx)
    env = commit.stamp()
    attributes = TerminatedAttributes(task_id=_task_id(env), reason=cmd.payload.reason)
    commit.add(ExecutionTerminated(**env, attributes=attributes))
    return commit.done()


def _decide_signal(state: ExecutionState | None, cmd: SignalExecution, ctx: Context) -> list[Event]:
    state = _require_open(state, cmd)
    commit = _Commit.after(state, cmd, ctx)
    env = commit.stamp()
    attributes = SignaledAttributes.trusted(
        signal_name=cmd.payload.name,
        input=Payload.trusted(type="json", value=cmd.payload.input, encoding_options=None),
        user_id=cmd.user_id,
    )
    commit.add(
        SignalReceived.trusted(
            **env, type=EventType.WORKFLOW_EXECUTION_SIGNALED, attributes=attributes
        )
    )
    return commit.done()


def _decide_complete(
    state: ExecutionState | None, cmd: CompleteExecution, ctx: Context
) -> list[Event]:
    state = _require_running_run(state, cmd, cmd.payload.run_id)
    commit = _Commit.after(state, cmd, ctx)
    env = commit.stamp()
    attributes = CompletedAttributes(
        task_id=_task_id(env),
        result=Payload(value=cmd.payload.result),
        attempt=state.attempt,
    )
    commit.add(ExecutionCompleted(**env, attributes=attributes))
    return commit.done()


def _decide_fail(state: ExecutionState | None, cmd: FailExecution, ctx: Context) -> list[Event]:
    state = _require_running_run(state, cmd, cmd.payload.run_id)
    commit = _Commit.after(state, cmd, ctx)
    fail_run(commit, state, cmd.payload.failure, cmd.payload.retryable, ctx)
    return commit.done()


def fail_run(
    commit: _Commit, state: ExecutionState, failure: Failure, retryable: bool, ctx: Context
) -> None:
    """Add RETRY_SCHEDULED (retry policy left) or WORKFLOW_EXECUTION_FAILED to `commit`."""
    policy = state.started.retry_policy
    # A run asked to cancel is not retried: its failure ends it.
    cancel_asked = state.cancel_deadline_ns is not None
    if (
        retryable
        and not cancel_asked
        and policy is not None
        and state.attempt < policy.max_attempts
    ):
        delay = policy.delay_seconds(state.attempt)
        env = commit.stamp()
        retry = RetryScheduledAttributes(
            task_id=_task_id(env),
            failed_attempt=state.attempt,
            failure=failure,
            delay_seconds=delay,
            retry_at_ns=ctx.now_ns + _seconds_to_ns(delay),
        )
        commit.add(RetryScheduled(**env, attributes=retry))
    else:
        env = commit.stamp()
        failed = FailedAttributes(task_id=_task_id(env), failure=failure, attempt=state.attempt)
        commit.add(ExecutionFailed(**env, attributes=failed))


def _decide_retry(state: ExecutionState | None, cmd: RetryExecution, ctx: Context) -> list[Event]:
    state = _require_latest_open_run(state, cmd, cmd.payload.run_id)
    if state.status is not ExecutionStatus.RETRYING_AFTER_ERROR:
        raise Rejected(
            RejectionCode.INVALID_TRANSITION,
            f"RetryExecution: {_describe(state)} has no retry pending",
        )
    expected = state.attempt + 1
    if cmd.payload.attempt != expected:
        raise Rejected(
            RejectionCode.INVALID_TRANSITION,
            f"RetryExecution: {_describe(state)} waits for attempt {expected}, "
            f"not {cmd.payload.attempt}",
        )
    commit = _Commit.after(state, cmd, ctx)
    env = commit.stamp()
    attributes = RetryStartedAttributes(task_id=_task_id(env), attempt=expected)
    commit.add(RetryStarted(**env, attributes=attributes))
    return commit.done()


def _decide_time_out(
    state: ExecutionState | None, cmd: TimeOutExecution, ctx: Context
) -> list[Event]:
    # The timers service owns the deadline (see ExecutionState.deadline_ns); the run id
    # in the payload is what keeps a stale timer from closing a newer run.
    state = _require_latest_open_run(state, cmd, cmd.payload.run_id)
    commit = _Commit.after(state, cmd, ctx)
    env = commit.stamp()
    attributes = TimedOutAttributes(
        task_id=_task_id(env),
        timeout_seconds=state.started.execution_timeout_seconds,
    )
    commit.add(ExecutionTimedOut(**env, attributes=attributes))
    return commit.done()


def _decide_continue_as_new(
    state: ExecutionState | None, cmd: ContinueAsNew, ctx: Context
) -> list[Event]:
    state = _require_running_run(state, cmd, cmd.payload.run_id)
    new_execution_id = continuation_id(state, cmd.payload.new_execution_id, ctx)
    if new_execution_id is None:
        raise Rejected(
            RejectionCode.INVALID_TRANSITION,
            f"ContinueAsNew: {_describe(state)} cannot continue as itself; "
            f"name another execution id",
        )
    commit = _Commit.after(state, cmd, ctx)
    continue_run(commit, state, new_execution_id, cmd.payload, ctx)
    return commit.done()


def continuation_id(state: ExecutionState, named: str | None, ctx: Context) -> str | None:
    """The successor's execution id; None if it would be the execution itself."""
    new_execution_id = named or ctx.new_execution_id
    return None if new_execution_id == state.execution_id else new_execution_id


class _Continuation(Protocol):
    @property
    def input(self) -> JsonValue: ...
    @property
    def workflow_name(self) -> str | None: ...


def continue_run(
    commit: _Commit,
    state: ExecutionState,
    new_execution_id: str,
    asked: _Continuation,
    ctx: Context,
) -> None:
    """Add WORKFLOW_EXECUTION_CONTINUED_AS_NEW to `commit`."""
    env = commit.stamp()
    attributes = ContinuedAsNewAttributes(
        task_id=_task_id(env),
        new_execution_id=new_execution_id,
        new_execution_run_id=ctx.successor_run_id,
        workflow_name=asked.workflow_name or state.workflow_name,
        input=Payload(value=asked.input),
    )
    commit.add(ExecutionContinuedAsNew(**env, attributes=attributes))


_ActivityType = Literal[
    EventType.ACTIVITY_TASK_STARTED,
    EventType.ACTIVITY_TASK_COMPLETED,
    EventType.ACTIVITY_TASK_RETRYING,
    EventType.ACTIVITY_TASK_FAILED,
]
_ACTIVITY_EVENT: Mapping[str, _ActivityType] = {
    "started": EventType.ACTIVITY_TASK_STARTED,
    "completed": EventType.ACTIVITY_TASK_COMPLETED,
    "retrying": EventType.ACTIVITY_TASK_RETRYING,
    "failed": EventType.ACTIVITY_TASK_FAILED,
}


def _decide_activity(
    state: ExecutionState | None, cmd: RecordActivityTask, ctx: Context
) -> list[Event]:
    # Recorded as reported: the worker's replay owns the activity's own lifecycle.
    state = _require_running_run(state, cmd, cmd.payload.run_id)
    p = cmd.payload
    if (
        state.workflow_task_seq is not None
        and p.stage != "started"
        and state.activities.get(p.task_id) != p.attempt
    ):
        # A run a worker advances: a late outcome of an attempt that no longer runs (timed
        # out by its deadline, superseded by a retry) would contradict the history.
        raise Rejected(
            RejectionCode.INVALID_TRANSITION,
            f"RecordActivityTask: activity {p.task_id!r} attempt {p.attempt} is not running "
            f"in {_describe(state)}",
        )
    commit = _Commit.after(state, cmd, ctx)
    add_activity(commit, p.task_id, p)
    return commit.done()


class _ActivityFacts(Protocol):
    @property
    def stage(self) -> Literal["started", "completed", "retrying", "failed"]: ...
    @property
    def activity_name(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def input(self) -> JsonValue: ...
    @property
    def result(self) -> JsonValue: ...
    @property
    def failure(self) -> Failure | None: ...


def add_activity(commit: _Commit, activity_id: str, p: _ActivityFacts) -> None:
    """Add ACTIVITY_TASK_<STAGE> (a report or a workflow-task step) to `commit`."""
    env = commit.stamp()
    attributes = ActivityTaskAttributes(
        task_id=activity_id,
        activity_name=p.activity_name,
        attempt=p.attempt,
        # The public shapes require input on STARTED and result on COMPLETED.
        input=_wrap(p.input, always=p.stage == "started"),
        result=_wrap(p.result, always=p.stage == "completed"),
        failure=p.failure,
    )
    event_type = _ACTIVITY_EVENT[p.stage]
    commit.add(ActivityTaskEvent(**env, type=event_type, attributes=attributes))


_CustomTaskType = Literal[
    EventType.CUSTOM_TASK_STARTED,
    EventType.CUSTOM_TASK_IN_PROGRESS,
    EventType.CUSTOM_TASK_COMPLETED,
    EventType.CUSTOM_TASK_FAILED,
    EventType.CUSTOM_TASK_TIMED_OUT,
    EventType.CUSTOM_TASK_CANCELED,
]
_CUSTOM_TASK_EVENT: Mapping[str, _CustomTaskType] = {
    "started": EventType.CUSTOM_TASK_STARTED,
    "in_progress": EventType.CUSTOM_TASK_IN_PROGRESS,
    "completed": EventType.CUSTOM_TASK_COMPLETED,
    "failed": EventType.CUSTOM_TASK_FAILED,
    "timed_out": EventType.CUSTOM_TASK_TIMED_OUT,
    "canceled": EventType.CUSTOM_TASK_CANCELED,
}


def _decide_custom_task(
    state: ExecutionState | None, cmd: RecordCustomTask, ctx: Context
) -> list[Event]:
    state = _require_running_run(state, cmd, cmd.payload.run_id)
    commit = _Commit.after(state, cmd, ctx)
    add_custom_task(commit, cmd.payload)
    return commit.done()


def add_custom_task(commit: _Commit, p: CustomTaskReportPayload | CustomTaskStep) -> None:
    """Add CUSTOM_TASK_<STAGE> (a report or a workflow-task step) to `commit`."""
    env = commit.stamp()
    attributes = CustomTaskAttributes(
        custom_task_id=p.custom_task_id,
        custom_task_type=p.custom_task_type,
        # IN_PROGRESS and COMPLETED require a payload in the public shape.
        payload=_wrap(p.payload, always=p.stage in ("started", "in_progress", "completed")),
        failure=p.failure,
        reason=p.reason,
    )
    event_type = _CUSTOM_TASK_EVENT[p.stage]
    commit.add(CustomTaskEvent(**env, type=event_type, attributes=attributes))


# Facts a reset carries into the new run. Status changes (start, retry, close) are not
# facts of the workflow's progress and are never copied.
_REPLAYED_TYPES = frozenset(_ACTIVITY_EVENT.values()) | frozenset(_CUSTOM_TASK_EVENT.values())


def _decide_reset(state: ExecutionState | None, cmd: ResetExecution, ctx: Context) -> list[Event]:
    state = _require_state(state, cmd)
    history = _latest_run_history(state, ctx)
    p = cmd.payload
    started = _started_event(history)
    if not started.event_number <= p.event_id <= len(history):
        raise Rejected(
            RejectionCode.INVALID_RESET_POINT,
            f"ResetExecution: event {p.event_id} is not a reset point of {_describe(state)}; "
            f"choose one in {started.event_number}..{len(history)}",
        )
    _require_fresh_run_id(state, cmd, ctx.new_run_id)
    commit = _Commit.after(state, cmd, ctx)
    if state.is_open:
        # One run is active at a time: the run being replaced ends here, in its own history.
        reason = f"reset: {p.reason}" if p.reason else "reset"
        env = commit.stamp()
        ended = TerminatedAttributes(task_id=_task_id(env), reason=reason)
        commit.add(ExecutionTerminated(**env, attributes=ended))
    commit.open_run(
        ctx.new_run_id, state.workflow_name, state.root_execution_id, state.parent_execution_id
    )
    env = commit.stamp()
    reset = RunResetAttributes(
        previous_run_id=state.run_id,
        event_id=p.event_id,
        reason=p.reason,
        exclude_signals=p.exclude_signals,
        exclude_updates=p.exclude_updates,
    )
    commit.add(RunReset(**env, attributes=reset))
    env = commit.stamp()
    restarted = started.attributes.model_copy(update={"task_id": _task_id(env), "attempt": 1})
    commit.add(ExecutionStarted(**env, attributes=restarted))
    for event in history[: p.event_id]:
        if event.type in _REPLAYED_TYPES or (
            event.type is EventType.WORKFLOW_EXECUTION_SIGNALED and not p.exclude_signals
        ):
            commit.restamp(event)
    if not p.exclude_signals:
        # Signals received after the reset point were still sent to this execution:
        # like Temporal, re-apply them rather than lose them.
        for event in history[p.event_id :]:
            if event.type is EventType.WORKFLOW_EXECUTION_SIGNALED:
                commit.restamp(event)
    return commit.done()


def _latest_run_history(state: ExecutionState, ctx: Context) -> tuple[Event, ...]:
    history = ctx.history
    numbers = [event.event_number for event in history]
    if any(event.run_id != state.run_id for event in history) or numbers != list(
        range(1, state.run_event_count + 1)
    ):
        # The engine's bug, not the caller's: refuse loudly instead of resetting wrongly.
        raise ValueError(
            f"ctx.history must hold the {state.run_event_count} events of run "
            f"{state.run_id!r}, oldest first"
        )
    return history


def _started_event(history: Sequence[Event]) -> ExecutionStarted:
    for event in history:
        if isinstance(event, ExecutionStarted):
            return event
    raise InvalidHistory("a run's history has no WORKFLOW_EXECUTION_STARTED event")


_Decider = Callable[[ExecutionState | None, Any, Context], list[Event]]
_Applier = Callable[[ExecutionState, Event], ExecutionState]

_DECIDERS: dict[type[Any], _Decider] = {
    StartWorkflow: _decide_start,
    CancelExecution: _decide_cancel,
    TerminateExecution: _decide_terminate,
    SignalExecution: _decide_signal,
    ResetExecution: _decide_reset,
    CompleteExecution: _decide_complete,
    FailExecution: _decide_fail,
    ContinueAsNew: _decide_continue_as_new,
    RecordActivityTask: _decide_activity,
    RecordCustomTask: _decide_custom_task,
    TimeOutExecution: _decide_time_out,
    RetryExecution: _decide_retry,
}


# --- evolve ---------------------------------------------------------------------------


def evolve(state: ExecutionState | None, event: Event) -> ExecutionState:
    """The state after `event`; raises `InvalidHistory` if the event cannot follow `state`.

    Strict on purpose: the position checks are what make a corrupt or reordered stream
    fail at load time instead of producing a plausible but wrong state.
    """
    if state is None:
        return _first_event(event)
    if event.execution_id != state.execution_id:
        raise InvalidHistory(
            f"event {event.event_id} belongs to {event.execution_id!r}, not {state.execution_id!r}"
        )
    if event.seq not in (state.seq, state.seq + 1):
        raise InvalidHistory(f"event {event.event_id} does not follow seq {state.seq}")
    if event.run_id != state.run_id:
        return _open_run(state, event)
    if state.status.is_terminal:
        raise InvalidHistory(
            f"event {event.event_id} follows the end of run {state.run_id!r} ({state.status.value})"
        )
    if event.event_number != state.run_event_count + 1:
        raise InvalidHistory(
            f"event {event.event_id} has event_number {event.event_number}, "
            f"expected {state.run_event_count + 1}"
        )
    # Every event folded moves the state (`replaced`: `model_copy` without its generic
    # machinery, half the cost; the values are the validated event's).
    moved = state.replaced(seq=event.seq, run_event_count=event.event_number)
    apply = _APPLIERS.get(event.type)
    if apply is not None:
        moved = apply(moved, event)
    return _apply_status(moved, event)


def fold(events: Iterable[Event], state: ExecutionState | None = None) -> ExecutionState | None:
    """`evolve` over `events`, starting from `state` (a snapshot) or from nothing."""
    for event in events:
        state = evolve(state, event)
    return state


def _first_event(event: Event) -> ExecutionState:
    if not isinstance(event, ExecutionStarted) or event.seq != 1 or event.event_number != 1:
        raise InvalidHistory(
            f"a stream starts with WORKFLOW_EXECUTION_STARTED at seq 1, not {event.event_id} "
            f"({event.type.value})"
        )
    return _state_of_started_run(event, seq=event.seq, run_count=1)


def _open_run(state: ExecutionState, event: Event) -> ExecutionState:
    """A new run under the same execution id: only after the previous run has closed."""
    if state.is_open:
        raise InvalidHistory(
            f"event {event.event_id} opens run {event.run_id!r} while run "
            f"{state.run_id!r} is still {state.status.value}"
        )
    if event.event_number != 1:
        raise InvalidHistory(f"event {event.event_id} opens a run but is not its event 1")
    if isinstance(event, ExecutionStarted):
        return _state_of_started_run(event, seq=event.seq, run_count=state.run_count + 1)
    if isinstance(event, RunReset):
        if event.attributes.previous_run_id != state.run_id:
            raise InvalidHistory(
                f"event {event.event_id} resets run {event.attributes.previous_run_id!r}, "
                f"but the latest run is {state.run_id!r}"
            )
        # The STARTED event that follows in the same commit fills in the run's attributes.
        return state.model_copy(
            update={
                "seq": event.seq,
                "run_id": event.run_id,
                "run_event_count": 1,
                "run_count": state.run_count + 1,
                "status": ExecutionStatus.RUNNING,
                "attempt": 1,
                "started_at_ns": event.timestamp_ns,
                "closed_at_ns": None,
                "result": None,
                "last_failure": None,
                "retry_at_ns": None,
                "reset_from_run_id": event.attributes.previous_run_id,
                "reset_event_id": event.attributes.event_id,
                "successor_execution_id": None,
                "successor_run_id": None,
                **_FRESH_RUN,
            }
        )
    raise InvalidHistory(
        f"event {event.event_id} ({event.type.value}) cannot open run {event.run_id!r}"
    )


# The worker-protocol fields of a run no worker has advanced yet.
_FRESH_RUN: dict[str, Any] = {
    "workflow_task_seq": None,
    "workflow_task_failures": 0,
    "timers": {},
    "activities": {},
    "children": {},
    "updates": {},
    "cancel_deadline_ns": None,
}


def _state_of_started_run(event: ExecutionStarted, seq: int, run_count: int) -> ExecutionState:
    # Every start folds this (one per HTTP start): built from the validated event without
    # validating again (FrozenModel.trusted: every field, in declaration order), which was
    # ~13 % of deciding a start in a profile (3-16 % measured alternating). The bounds hold
    # by construction: `seq` and the event number are an event's (>= 1), `run_count` is 1
    # or the state's + 1, and `attempt` (>= 1 in the state, unbounded in the event) is 1
    # in every start the domain writes (`_decide_start`, a reset's copy of one).
    return ExecutionState.trusted(
        execution_id=event.execution_id,
        seq=seq,
        run_id=event.run_id,
        run_event_count=event.event_number,
        run_count=run_count,
        status=ExecutionStatus.RUNNING,
        workflow_name=event.workflow_name,
        root_execution_id=event.root_execution_id,
        parent_execution_id=event.parent_execution_id,
        attempt=event.attributes.attempt,
        started=event.attributes,
        started_at_ns=event.timestamp_ns,
        closed_at_ns=None,
        result=None,
        last_failure=None,
        retry_at_ns=None,
        reset_from_run_id=None,
        reset_event_id=None,
        successor_execution_id=None,
        successor_run_id=None,
        workflow_task_seq=None,
        workflow_task_failures=0,
        timers={},
        activities={},
        children={},
        updates={},
        cancel_deadline_ns=None,
    )


def _apply_started_after_reset(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, ExecutionStarted)
    # Inside a run, STARTED is legal only as event 2 of a run that a reset opened.
    if state.reset_from_run_id is None or event.event_number != 2:
        raise InvalidHistory(f"event {event.event_id}: run {state.run_id!r} already started")
    return state.model_copy(
        update={
            "workflow_name": event.workflow_name,
            "root_execution_id": event.root_execution_id,
            "parent_execution_id": event.parent_execution_id,
            "attempt": event.attributes.attempt,
            "started": event.attributes,
        }
    )


def _apply_completed(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, ExecutionCompleted)
    return state.model_copy(update={"result": event.attributes.result})


def _apply_failed(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, ExecutionFailed)
    return state.model_copy(update={"last_failure": event.attributes.failure})


def _apply_retry_scheduled(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, RetryScheduled)
    # The failed attempt's timers, activities and updates end with it; its children run on.
    return state.model_copy(
        update={
            "last_failure": event.attributes.failure,
            "retry_at_ns": event.attributes.retry_at_ns,
            "timers": {},
            "activities": {},
            "updates": {},
        }
    )


def _apply_retry_started(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, RetryStarted)
    if state.status is not ExecutionStatus.RETRYING_AFTER_ERROR:
        raise InvalidHistory(f"event {event.event_id}: no retry pending in {state.run_id!r}")
    return state.model_copy(update={"attempt": event.attributes.attempt, "retry_at_ns": None})


def _apply_continued_as_new(state: ExecutionState, event: Event) -> ExecutionState:
    assert isinstance(event, ExecutionContinuedAsNew)
    return state.model_copy(
        update={
            "successor_execution_id": event.attributes.new_execution_id,
            "successor_run_id": event.attributes.new_execution_run_id,
        }
    )


def _apply_reset_inside_run(state: ExecutionState, event: Event) -> ExecutionState:
    raise InvalidHistory(f"event {event.event_id}: a reset must open a new run")


_APPLIERS: dict[EventType, _Applier] = {
    EventType.WORKFLOW_EXECUTION_STARTED: _apply_started_after_reset,
    EventType.WORKFLOW_EXECUTION_COMPLETED: _apply_completed,
    EventType.WORKFLOW_EXECUTION_FAILED: _apply_failed,
    EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED: _apply_retry_scheduled,
    EventType.WORKFLOW_EXECUTION_RETRY_STARTED: _apply_retry_started,
    EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW: _apply_continued_as_new,
    EventType.WORKFLOW_RUN_RESET: _apply_reset_inside_run,
}


def _apply_status(state: ExecutionState, event: Event) -> ExecutionState:
    status = STATUS_AFTER.get(event.type)
    if status is None or status is state.status:
        return state
    closed_at = event.timestamp_ns if status.is_terminal else None
    return state.replaced(status=status, closed_at_ns=closed_at)


# --- continue-as-new ------------------------------------------------------------------


def successor_commands(
    events: Sequence[Event], ctx: Context, state: ExecutionState
) -> list[Command]:
    """The StartWorkflow of the execution a CONTINUED_AS_NEW event hands over to.

    The successor lives in another stream, so the engine publishes this as a new command.
    Its command_id derives from the event, so a re-published commit starts it at most once.
    `state` is any state of this execution whose latest run is the one that continued
    (e.g. the state right after the commit): the event alone does not carry the run's
    deployment, user, retry policy or timeout, which the successor inherits.
    """
    commands: list[Command] = []
    for event in events:
        if not isinstance(event, ExecutionContinuedAsNew):
            continue
        if state.run_id != event.run_id or state.execution_id != event.execution_id:
            raise ValueError(
                f"state describes run {state.run_id!r}, not the run {event.run_id!r} "
                f"that continued as new"
            )
        started = state.started
        payload = StartWorkflowPayload(
            workflow_name=event.attributes.workflow_name,
            input=event.attributes.input.value,
            deployment_name=started.deployment_name,
            execution_timeout_seconds=started.execution_timeout_seconds,
            retry_policy=started.retry_policy,
            parent_execution_id=event.parent_execution_id,
            root_execution_id=event.root_execution_id,
            internal=started.internal,
            display_name=started.display_name,
            search_keys=started.search_keys,
            workflow_tags=started.workflow_tags,
            run_id=event.attributes.new_execution_run_id,
            continued_from_execution_id=event.execution_id,
            cancel_grace_seconds=started.cancel_grace_seconds,
        )
        commands.append(
            StartWorkflow(
                command_id=f"{event.event_id}:successor",
                execution_id=event.attributes.new_execution_id,
                issued_at=ns_to_datetime(ctx.now_ns),
                user_id=started.user_id,
                payload=payload,
            )
        )
    return commands


# --- small conversions ----------------------------------------------------------------


def _seconds_to_ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


def _wrap(value: Any, *, always: bool) -> Payload | None:
    if value is None and not always:
        return None
    return Payload(value=value)


def register(
    deciders: Mapping[type[Any], _Decider], appliers: Mapping[EventType, _Applier]
) -> None:
    """Add the deciders and appliers of a sibling module (services/engine/workflow_tasks.py)."""
    _DECIDERS.update(deciders)
    _APPLIERS.update(appliers)


# The worker protocol's half of the domain builds on this module's helpers and registers
# itself when imported; importing it last works whichever of the two is imported first.
import services.engine.workflow_tasks  # noqa: E402, F401
