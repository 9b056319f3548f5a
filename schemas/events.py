"""Events: the facts the engine stores, one stream per execution.

Each accepted command becomes one commit holding one or more events. An event's
position is `(seq, index)`: `seq` is the commit's number in its execution's stream
(1, 2, 3, … without gaps) and `index` its place inside the commit. Subscribers
de-duplicate re-delivered events by that position. `event_number` is the event's
1-based position in its run's history: the `event_id` that a reset names.

Event types are the 17 public Mistral types where one fits, plus what the domain needs
(terminated, timed out, signal received, retry scheduled/started, run reset, and the
worker protocol's: workflow task completed, timers, markers, cancel requested, children,
updates — docs/worker-protocol.md). The public API maps the extra types or leaves them out
of public event streams.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, JsonValue, TypeAdapter

from schemas.common import (
    ExecutionStatus,
    Failure,
    FrozenModel,
    ParentClosePolicy,
    Payload,
    RetryPolicy,
)


class EventType(StrEnum):
    WORKFLOW_EXECUTION_STARTED = "WORKFLOW_EXECUTION_STARTED"
    WORKFLOW_EXECUTION_COMPLETED = "WORKFLOW_EXECUTION_COMPLETED"
    WORKFLOW_EXECUTION_FAILED = "WORKFLOW_EXECUTION_FAILED"
    WORKFLOW_EXECUTION_CANCELED = "WORKFLOW_EXECUTION_CANCELED"
    WORKFLOW_EXECUTION_CONTINUED_AS_NEW = "WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
    WORKFLOW_TASK_TIMED_OUT = "WORKFLOW_TASK_TIMED_OUT"
    WORKFLOW_TASK_FAILED = "WORKFLOW_TASK_FAILED"
    CUSTOM_TASK_STARTED = "CUSTOM_TASK_STARTED"
    CUSTOM_TASK_IN_PROGRESS = "CUSTOM_TASK_IN_PROGRESS"
    CUSTOM_TASK_COMPLETED = "CUSTOM_TASK_COMPLETED"
    CUSTOM_TASK_FAILED = "CUSTOM_TASK_FAILED"
    CUSTOM_TASK_TIMED_OUT = "CUSTOM_TASK_TIMED_OUT"
    CUSTOM_TASK_CANCELED = "CUSTOM_TASK_CANCELED"
    ACTIVITY_TASK_STARTED = "ACTIVITY_TASK_STARTED"
    ACTIVITY_TASK_COMPLETED = "ACTIVITY_TASK_COMPLETED"
    ACTIVITY_TASK_RETRYING = "ACTIVITY_TASK_RETRYING"
    ACTIVITY_TASK_FAILED = "ACTIVITY_TASK_FAILED"
    # Runstore's own: not in the public vocabulary.
    WORKFLOW_EXECUTION_TERMINATED = "WORKFLOW_EXECUTION_TERMINATED"
    WORKFLOW_EXECUTION_TIMED_OUT = "WORKFLOW_EXECUTION_TIMED_OUT"
    WORKFLOW_EXECUTION_SIGNALED = "WORKFLOW_EXECUTION_SIGNALED"
    WORKFLOW_EXECUTION_RETRY_SCHEDULED = "WORKFLOW_EXECUTION_RETRY_SCHEDULED"
    WORKFLOW_EXECUTION_RETRY_STARTED = "WORKFLOW_EXECUTION_RETRY_STARTED"
    WORKFLOW_RUN_RESET = "WORKFLOW_RUN_RESET"
    WORKFLOW_TASK_COMPLETED = "WORKFLOW_TASK_COMPLETED"
    TIMER_STARTED = "TIMER_STARTED"
    TIMER_FIRED = "TIMER_FIRED"
    TIMER_CANCELED = "TIMER_CANCELED"
    MARKER_RECORDED = "MARKER_RECORDED"
    WORKFLOW_EXECUTION_CANCEL_REQUESTED = "WORKFLOW_EXECUTION_CANCEL_REQUESTED"
    CHILD_WORKFLOW_INITIATED = "CHILD_WORKFLOW_INITIATED"
    CHILD_WORKFLOW_STARTED = "CHILD_WORKFLOW_STARTED"
    CHILD_WORKFLOW_START_FAILED = "CHILD_WORKFLOW_START_FAILED"
    CHILD_WORKFLOW_CLOSED = "CHILD_WORKFLOW_CLOSED"
    WORKFLOW_EXECUTION_UPDATE_ACCEPTED = "WORKFLOW_EXECUTION_UPDATE_ACCEPTED"
    WORKFLOW_EXECUTION_UPDATE_COMPLETED = "WORKFLOW_EXECUTION_UPDATE_COMPLETED"

    @property
    def is_public(self) -> bool:
        return self not in _INTERNAL_TYPES


_INTERNAL_TYPES = frozenset(
    {
        EventType.WORKFLOW_EXECUTION_TERMINATED,
        EventType.WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED,
        EventType.WORKFLOW_EXECUTION_RETRY_STARTED,
        EventType.WORKFLOW_RUN_RESET,
        EventType.WORKFLOW_TASK_COMPLETED,
        EventType.TIMER_STARTED,
        EventType.TIMER_FIRED,
        EventType.TIMER_CANCELED,
        EventType.MARKER_RECORDED,
        EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED,
        EventType.CHILD_WORKFLOW_INITIATED,
        EventType.CHILD_WORKFLOW_STARTED,
        EventType.CHILD_WORKFLOW_START_FAILED,
        EventType.CHILD_WORKFLOW_CLOSED,
        EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
        EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED,
    }
)

# --- attributes -----------------------------------------------------------------------


class StartedAttributes(FrozenModel):
    task_id: str
    workflow_name: str
    input: Payload
    display_name: str | None = None
    attempt: int = 1
    deployment_name: str | None = None
    user_id: str | None = None
    internal: bool = False
    execution_timeout_seconds: float | None = None
    retry_policy: RetryPolicy | None = None
    search_keys: dict[str, str | None] | None = None
    workflow_tags: list[str] | None = None
    continued_from_execution_id: str | None = None
    """Set when this execution was started by a continue-as-new."""
    parent_run_id: str | None = None
    """A child's parent run."""
    parent_close_policy: ParentClosePolicy | None = None
    cancel_grace_seconds: float | None = None
    """None = the default grace (schemas.commands.DEFAULT_CANCEL_GRACE_SECONDS)."""


class CompletedAttributes(FrozenModel):
    task_id: str
    result: Payload
    attempt: int = 1


class FailedAttributes(FrozenModel):
    task_id: str
    failure: Failure
    attempt: int = 1


class CanceledAttributes(FrozenModel):
    task_id: str
    reason: str | None = None
    attempt: int = 1


class ContinuedAsNewAttributes(FrozenModel):
    task_id: str
    new_execution_id: str
    new_execution_run_id: str
    workflow_name: str
    input: Payload


class WorkflowTaskTimedOutAttributes(FrozenModel):
    task_id: str
    timeout_type: str | None = None


class WorkflowTaskFailedAttributes(FrozenModel):
    task_id: str
    failure: Failure
    task_seq: int | None = None
    """The history the failing replay saw (FailWorkflowTask)."""
    worker_id: str | None = None
    retry_at_ns: int | None = None
    """When the timers service fires `workflow-task:{seq}` (seq = this event's commit)."""


class WorkflowTaskCompletedAttributes(FrozenModel):
    task_seq: int
    """The last seq of the history the worker's replay saw."""
    worker_id: str | None = None


class TimerStartedAttributes(FrozenModel):
    timer_id: str
    duration_seconds: float
    fire_at_ns: int


class TimerAttributes(FrozenModel):
    """TIMER_FIRED / TIMER_CANCELED."""

    timer_id: str


class MarkerRecordedAttributes(FrozenModel):
    marker_id: str
    name: str
    value: Payload


class CancelRequestedAttributes(FrozenModel):
    reason: str | None = None
    cancel_deadline_ns: int
    """When the engine cancels the run itself if the code has not ended it (`cancel-deadline`)."""
    user_id: str | None = None


class ChildInitiatedAttributes(FrozenModel):
    child_execution_id: str
    workflow_name: str
    input: Payload
    parent_close_policy: ParentClosePolicy = ParentClosePolicy.TERMINATE
    deployment_name: str | None = None
    execution_timeout_seconds: float | None = None
    retry_policy: RetryPolicy | None = None
    display_name: str | None = None


class ChildReportAttributes(FrozenModel):
    """CHILD_WORKFLOW_STARTED / _START_FAILED / _CLOSED."""

    child_execution_id: str
    child_run_id: str | None = None
    status: ExecutionStatus | None = None
    """The child's terminal status (CLOSED)."""
    result: Payload | None = None
    failure: Failure | None = None


class UpdateAcceptedAttributes(FrozenModel):
    update_id: str
    update_name: str
    input: Payload


class UpdateCompletedAttributes(FrozenModel):
    update_id: str
    result: Payload | None = None
    failure: Failure | None = None


class CustomTaskAttributes(FrozenModel):
    custom_task_id: str
    custom_task_type: str
    payload: Payload | None = None
    failure: Failure | None = None
    reason: str | None = None
    timeout_type: str | None = None


class ActivityTaskAttributes(FrozenModel):
    task_id: str
    activity_name: str
    attempt: int = 1
    input: Payload | None = None
    result: Payload | None = None
    failure: Failure | None = None


class TerminatedAttributes(FrozenModel):
    task_id: str
    reason: str | None = None


class TimedOutAttributes(FrozenModel):
    task_id: str
    timeout_seconds: float | None = None


class SignaledAttributes(FrozenModel):
    signal_name: str
    input: Payload
    user_id: str | None = None


class RetryScheduledAttributes(FrozenModel):
    task_id: str
    failed_attempt: int
    failure: Failure
    delay_seconds: float
    retry_at_ns: int


class RetryStartedAttributes(FrozenModel):
    task_id: str
    attempt: int


class RunResetAttributes(FrozenModel):
    previous_run_id: str
    event_id: int
    """The position in the previous run's history the new run starts from."""
    reason: str | None = None
    exclude_signals: bool = False
    exclude_updates: bool = False


# --- envelope -------------------------------------------------------------------------


class _Event(FrozenModel):
    event_id: str
    """Globally unique: `{execution_id}:{seq}:{index}`."""
    execution_id: str
    seq: int = Field(ge=1)
    index: int = Field(ge=0)
    event_number: int = Field(ge=1)
    run_id: str
    workflow_name: str
    root_execution_id: str
    parent_execution_id: str | None = None
    timestamp_ns: int
    """Unix time in nanoseconds, from the engine's clock when the command was applied."""
    command_id: str
    """The command this event answers: lets subscribers correlate and audit."""


class ExecutionStarted(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_STARTED] = EventType.WORKFLOW_EXECUTION_STARTED
    attributes: StartedAttributes


class ExecutionCompleted(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_COMPLETED] = EventType.WORKFLOW_EXECUTION_COMPLETED
    attributes: CompletedAttributes


class ExecutionFailed(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_FAILED] = EventType.WORKFLOW_EXECUTION_FAILED
    attributes: FailedAttributes


class ExecutionCanceled(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_CANCELED] = EventType.WORKFLOW_EXECUTION_CANCELED
    attributes: CanceledAttributes


class ExecutionContinuedAsNew(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW] = (
        EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    )
    attributes: ContinuedAsNewAttributes


class WorkflowTaskTimedOut(_Event):
    type: Literal[EventType.WORKFLOW_TASK_TIMED_OUT] = EventType.WORKFLOW_TASK_TIMED_OUT
    attributes: WorkflowTaskTimedOutAttributes


class WorkflowTaskFailed(_Event):
    type: Literal[EventType.WORKFLOW_TASK_FAILED] = EventType.WORKFLOW_TASK_FAILED
    attributes: WorkflowTaskFailedAttributes


class CustomTaskEvent(_Event):
    type: Literal[
        EventType.CUSTOM_TASK_STARTED,
        EventType.CUSTOM_TASK_IN_PROGRESS,
        EventType.CUSTOM_TASK_COMPLETED,
        EventType.CUSTOM_TASK_FAILED,
        EventType.CUSTOM_TASK_TIMED_OUT,
        EventType.CUSTOM_TASK_CANCELED,
    ]
    attributes: CustomTaskAttributes


class ActivityTaskEvent(_Event):
    type: Literal[
        EventType.ACTIVITY_TASK_STARTED,
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.ACTIVITY_TASK_RETRYING,
        EventType.ACTIVITY_TASK_FAILED,
    ]
    attributes: ActivityTaskAttributes


class ExecutionTerminated(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_TERMINATED] = EventType.WORKFLOW_EXECUTION_TERMINATED
    attributes: TerminatedAttributes


class ExecutionTimedOut(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_TIMED_OUT] = EventType.WORKFLOW_EXECUTION_TIMED_OUT
    attributes: TimedOutAttributes


class SignalReceived(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_SIGNALED] = EventType.WORKFLOW_EXECUTION_SIGNALED
    attributes: SignaledAttributes


class RetryScheduled(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED] = (
        EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED
    )
    attributes: RetryScheduledAttributes


class RetryStarted(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_RETRY_STARTED] = (
        EventType.WORKFLOW_EXECUTION_RETRY_STARTED
    )
    attributes: RetryStartedAttributes


class RunReset(_Event):
    type: Literal[EventType.WORKFLOW_RUN_RESET] = EventType.WORKFLOW_RUN_RESET
    attributes: RunResetAttributes


class WorkflowTaskCompleted(_Event):
    type: Literal[EventType.WORKFLOW_TASK_COMPLETED] = EventType.WORKFLOW_TASK_COMPLETED
    attributes: WorkflowTaskCompletedAttributes


class TimerStarted(_Event):
    type: Literal[EventType.TIMER_STARTED] = EventType.TIMER_STARTED
    attributes: TimerStartedAttributes


class TimerEvent(_Event):
    type: Literal[EventType.TIMER_FIRED, EventType.TIMER_CANCELED]
    attributes: TimerAttributes


class MarkerRecorded(_Event):
    type: Literal[EventType.MARKER_RECORDED] = EventType.MARKER_RECORDED
    attributes: MarkerRecordedAttributes


class CancelRequested(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED] = (
        EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED
    )
    attributes: CancelRequestedAttributes


class ChildInitiated(_Event):
    type: Literal[EventType.CHILD_WORKFLOW_INITIATED] = EventType.CHILD_WORKFLOW_INITIATED
    attributes: ChildInitiatedAttributes


class ChildReported(_Event):
    type: Literal[
        EventType.CHILD_WORKFLOW_STARTED,
        EventType.CHILD_WORKFLOW_START_FAILED,
        EventType.CHILD_WORKFLOW_CLOSED,
    ]
    attributes: ChildReportAttributes


class UpdateAccepted(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED] = (
        EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    )
    attributes: UpdateAcceptedAttributes


class UpdateCompleted(_Event):
    type: Literal[EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED] = (
        EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED
    )
    attributes: UpdateCompletedAttributes


Event = Annotated[
    ExecutionStarted
    | ExecutionCompleted
    | ExecutionFailed
    | ExecutionCanceled
    | ExecutionContinuedAsNew
    | WorkflowTaskTimedOut
    | WorkflowTaskFailed
    | CustomTaskEvent
    | ActivityTaskEvent
    | ExecutionTerminated
    | ExecutionTimedOut
    | SignalReceived
    | RetryScheduled
    | RetryStarted
    | RunReset
    | WorkflowTaskCompleted
    | TimerStarted
    | TimerEvent
    | MarkerRecorded
    | CancelRequested
    | ChildInitiated
    | ChildReported
    | UpdateAccepted
    | UpdateCompleted,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_LIST_ADAPTER: TypeAdapter[list[Event]] = TypeAdapter(list[Event])

# Which status an event leaves its run in, for events that change it.
STATUS_AFTER: dict[EventType, ExecutionStatus] = {
    EventType.WORKFLOW_EXECUTION_STARTED: ExecutionStatus.RUNNING,
    EventType.WORKFLOW_EXECUTION_RETRY_STARTED: ExecutionStatus.RUNNING,
    EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED: ExecutionStatus.RETRYING_AFTER_ERROR,
    EventType.WORKFLOW_EXECUTION_COMPLETED: ExecutionStatus.COMPLETED,
    EventType.WORKFLOW_EXECUTION_FAILED: ExecutionStatus.FAILED,
    EventType.WORKFLOW_EXECUTION_CANCELED: ExecutionStatus.CANCELED,
    EventType.WORKFLOW_EXECUTION_TERMINATED: ExecutionStatus.TERMINATED,
    EventType.WORKFLOW_EXECUTION_TIMED_OUT: ExecutionStatus.TIMED_OUT,
    EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW: ExecutionStatus.CONTINUED_AS_NEW,
}

CLOSING_EVENT_TYPES = frozenset(t for t, status in STATUS_AFTER.items() if status.is_terminal)
"""The events that close a run (it gets no event after one; a reset opens another run)."""


def closes_run(event: Event) -> bool:
    """Whether `event` closes its run: the one rule, for every reader of events."""
    return event.type in CLOSING_EVENT_TYPES


def event_id_for(execution_id: str, seq: int, index: int) -> str:
    return f"{execution_id}:{seq}:{index}"


__all__ = [
    "CLOSING_EVENT_TYPES",
    "EVENT_ADAPTER",
    "EVENT_LIST_ADAPTER",
    "STATUS_AFTER",
    "Event",
    "EventType",
    "JsonValue",
    "closes_run",
    "event_id_for",
]
