"""Commands: what producers, the HTTP gateway, workers and timers ask the engine to do.

Every command travels on `workflows.commands` as one JSON record keyed by its
`execution_id`. The envelope is the same for every type; `payload` depends on `type`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, JsonValue, TypeAdapter, model_validator

from schemas.common import (
    ExecutionStatus,
    Failure,
    FrozenModel,
    Identifier,
    ParentClosePolicy,
    RetryPolicy,
)

SCHEMA_VERSION: Literal[1] = 1

# Search keys are filtered on as `key:value` / `key==:value` / `key` / `key==` (list_runs
# `search_key`), so a key holds none of ':', '=' or spaces, and is stored as a field name
# (no '.', no leading '$'): letters, digits, '_' and '-'.
SEARCH_KEY_PATTERN = r"^[A-Za-z0-9_-]+$"
SearchKeyName = Annotated[str, Field(min_length=1, max_length=100, pattern=SEARCH_KEY_PATTERN)]
SearchKeyValue = Annotated[str, Field(max_length=1024)]
WorkflowTag = Annotated[str, Field(min_length=1, max_length=100)]


class IdReusePolicy(StrEnum):
    """What StartWorkflow does when its execution id already names a closed execution."""

    ALLOW_DUPLICATE = "allow_duplicate"
    """Start a new run under the same execution id (the default)."""
    ALLOW_DUPLICATE_FAILED_ONLY = "allow_duplicate_failed_only"
    """Only if the latest run did not complete successfully."""
    REJECT_DUPLICATE = "reject_duplicate"
    """Never reuse an execution id."""


DEFAULT_CANCEL_GRACE_SECONDS = 30.0
"""How long a cancel request waits for the workflow code before the engine cancels."""

MAX_STEPS = 1_000
"""Most steps one CompleteWorkflowTask may carry."""

StepId = Annotated[str, Field(min_length=1, max_length=200)]


class _Envelope(FrozenModel):
    command_id: Annotated[str, Field(min_length=1, max_length=200)]
    """Unique per command; the engine applies a command id at most once."""
    execution_id: Identifier
    issued_at: AwareDatetime
    user_id: str | None = None
    """Who issued the command; None for system commands (timers)."""
    schema_version: Literal[1] = SCHEMA_VERSION


# --- payloads -----------------------------------------------------------------------


class StartWorkflowPayload(FrozenModel):
    workflow_name: Identifier
    input: JsonValue = None
    deployment_name: str | None = None
    execution_timeout_seconds: float | None = Field(default=None, gt=0)
    retry_policy: RetryPolicy | None = None
    parent_execution_id: Identifier | None = None
    root_execution_id: Identifier | None = None
    """Defaults to the parent's root, or to the execution itself for a root."""
    internal: bool = False
    display_name: str | None = None
    id_reuse_policy: IdReusePolicy = IdReusePolicy.ALLOW_DUPLICATE
    search_keys: (
        Annotated[
            dict[SearchKeyName, SearchKeyValue | None],
            # Published schemas: a key outside the pattern is an error, not an extra.
            Field(max_length=50, json_schema_extra={"additionalProperties": False}),
        ]
        | None
    ) = None
    """Values the run can be found by (list_runs `search_key`): strings, or null for a key
    that is set without a value. Runs opened by a reset and continue-as-new successors
    keep them."""
    workflow_tags: Annotated[list[WorkflowTag] | None, Field(max_length=50)] = None
    """The tags of the workflow (list_runs `workflow_tags`); kept like `search_keys`."""
    run_id: str | None = None
    """Pre-assigned run id; the engine sets it on continue-as-new successors, else generated."""
    continued_from_execution_id: Identifier | None = None
    """Set by the engine on the StartWorkflow of a continue-as-new successor."""
    parent_run_id: str | None = None
    """A child's parent run (set by the engine on a child's StartWorkflow)."""
    parent_close_policy: ParentClosePolicy | None = None
    """A child's policy when its parent's run closes (the parent's state applies it)."""
    cancel_grace_seconds: float | None = Field(default=None, ge=0)
    """How long a cancel request waits for the workflow code to end the run before the
    engine cancels it itself; None = DEFAULT_CANCEL_GRACE_SECONDS."""


class ReasonPayload(FrozenModel):
    reason: str | None = None


class SignalPayload(FrozenModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    input: JsonValue = None


class ResetPayload(FrozenModel):
    event_id: int = Field(ge=1)
    """Position in the latest run's history (1-based) to reset to."""
    reason: str | None = None
    exclude_signals: bool = False
    exclude_updates: bool = False


class _RunReport(FrozenModel):
    run_id: str
    """The run the reporter worked on; reports for a run that is no longer active are rejected."""


class CompletePayload(_RunReport):
    result: JsonValue = None


class FailPayload(_RunReport):
    failure: Failure
    retryable: bool = True


class ContinueAsNewPayload(_RunReport):
    input: JsonValue = None
    workflow_name: Identifier | None = None
    """Defaults to the closing run's workflow."""
    new_execution_id: Identifier | None = None
    """Defaults to an id the engine generates."""


class ActivityReportPayload(_RunReport):
    stage: Literal["started", "completed", "retrying", "failed"]
    task_id: str
    activity_name: str
    attempt: int = Field(default=1, ge=1)
    input: JsonValue = None
    result: JsonValue = None
    failure: Failure | None = None

    @model_validator(mode="after")
    def _failure_when_failing(self) -> ActivityReportPayload:
        if self.stage in {"retrying", "failed"} and self.failure is None:
            raise ValueError(f"an activity report with stage {self.stage!r} needs a failure")
        return self


class CustomTaskReportPayload(_RunReport):
    stage: Literal["started", "in_progress", "completed", "failed", "timed_out", "canceled"]
    custom_task_id: str
    custom_task_type: str
    payload: JsonValue = None
    failure: Failure | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _failure_when_failing(self) -> CustomTaskReportPayload:
        if self.stage == "failed" and self.failure is None:
            raise ValueError("a custom task report with stage 'failed' needs a failure")
        return self


class TimerPayload(_RunReport):
    attempt: int | None = None
    """For RetryExecution: the attempt the retry starts."""


# --- workflow tasks: what a worker reports after running workflow code ---------------


class ActivityStep(FrozenModel):
    """An activity the code ran (or started) inside the worker: ACTIVITY_TASK_<STAGE>."""

    kind: Literal["activity"] = "activity"
    activity_id: StepId
    activity_name: Annotated[str, Field(min_length=1, max_length=200)]
    stage: Literal["started", "completed", "retrying", "failed"]
    attempt: int = Field(default=1, ge=1)
    input: JsonValue = None
    result: JsonValue = None
    failure: Failure | None = None

    @model_validator(mode="after")
    def _failure_when_failing(self) -> ActivityStep:
        if self.stage in {"retrying", "failed"} and self.failure is None:
            raise ValueError(f"an activity step with stage {self.stage!r} needs a failure")
        return self


class CustomTaskStep(FrozenModel):
    """A custom task's progress, as RecordCustomTask's payload: CUSTOM_TASK_<STAGE>."""

    kind: Literal["custom_task"] = "custom_task"
    stage: Literal["started", "in_progress", "completed", "failed", "timed_out", "canceled"]
    custom_task_id: StepId
    custom_task_type: str
    payload: JsonValue = None
    failure: Failure | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _failure_when_failing(self) -> CustomTaskStep:
        if self.stage == "failed" and self.failure is None:
            raise ValueError("a custom task step with stage 'failed' needs a failure")
        return self


class StartTimerStep(FrozenModel):
    """A durable timer: TIMER_STARTED; the timers service fires it as FireTimer."""

    kind: Literal["start_timer"] = "start_timer"
    timer_id: StepId
    duration_seconds: float = Field(ge=0)


class CancelTimerStep(FrozenModel):
    kind: Literal["cancel_timer"] = "cancel_timer"
    timer_id: StepId


class StartChildStep(FrozenModel):
    """A child workflow: CHILD_WORKFLOW_INITIATED; the engine publishes its StartWorkflow."""

    kind: Literal["start_child"] = "start_child"
    child_execution_id: Identifier
    workflow_name: Identifier
    input: JsonValue = None
    parent_close_policy: ParentClosePolicy = ParentClosePolicy.TERMINATE
    deployment_name: str | None = None
    """Defaults to the parent's deployment."""
    execution_timeout_seconds: float | None = Field(default=None, gt=0)
    retry_policy: RetryPolicy | None = None
    display_name: str | None = None


class MarkerStep(FrozenModel):
    """A value the code must see again on replay (side effect, version): MARKER_RECORDED."""

    kind: Literal["marker"] = "marker"
    marker_id: StepId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    value: JsonValue = None


class UpdateAcceptedStep(FrozenModel):
    kind: Literal["update_accepted"] = "update_accepted"
    update_id: StepId
    update_name: Annotated[str, Field(min_length=1, max_length=200)]
    input: JsonValue = None


class UpdateCompletedStep(FrozenModel):
    kind: Literal["update_completed"] = "update_completed"
    update_id: StepId
    result: JsonValue = None
    failure: Failure | None = None


class CompleteStep(FrozenModel):
    """Final: WORKFLOW_EXECUTION_COMPLETED."""

    kind: Literal["complete"] = "complete"
    result: JsonValue = None


class FailStep(FrozenModel):
    """Final: WORKFLOW_EXECUTION_FAILED, or a retry, as FailExecution."""

    kind: Literal["fail"] = "fail"
    failure: Failure
    retryable: bool = True


class ContinueAsNewStep(FrozenModel):
    """Final: as ContinueAsNew."""

    kind: Literal["continue_as_new"] = "continue_as_new"
    input: JsonValue = None
    workflow_name: Identifier | None = None
    new_execution_id: Identifier | None = None


class CancelStep(FrozenModel):
    """Final: WORKFLOW_EXECUTION_CANCELED (the code acknowledged a cancel request)."""

    kind: Literal["cancel"] = "cancel"
    reason: str | None = None


Step = Annotated[
    ActivityStep
    | CustomTaskStep
    | StartTimerStep
    | CancelTimerStep
    | StartChildStep
    | MarkerStep
    | UpdateAcceptedStep
    | UpdateCompletedStep
    | CompleteStep
    | FailStep
    | ContinueAsNewStep
    | CancelStep,
    Field(discriminator="kind"),
]

FINAL_STEP_KINDS = frozenset({"complete", "fail", "continue_as_new", "cancel"})


class CompleteWorkflowTaskPayload(_RunReport):
    task_seq: int = Field(ge=1)
    """The last seq of the history the worker's replay saw."""
    worker_id: str | None = None
    steps: Annotated[list[Step], Field(max_length=MAX_STEPS)] = Field(default_factory=list)
    """In the order the code took them; at most one final step, and only last."""

    @model_validator(mode="after")
    def _final_step_last(self) -> CompleteWorkflowTaskPayload:
        for position, step in enumerate(self.steps[:-1]):
            if step.kind in FINAL_STEP_KINDS:
                raise ValueError(
                    f"steps[{position}] ({step.kind}) is final: only the last step may be"
                )
        return self


class FailWorkflowTaskPayload(_RunReport):
    task_seq: int = Field(ge=1)
    failure: Failure
    worker_id: str | None = None


class FireTimerPayload(_RunReport):
    timer_id: StepId
    """A TIMER_STARTED id, or the engine's own `workflow-task:{seq}` / `cancel-deadline`."""


class ChildReportPayload(_RunReport):
    """`run_id` is the PARENT's run."""

    child_execution_id: Identifier
    child_run_id: str | None = None
    stage: Literal["started", "start_failed", "closed"]
    status: ExecutionStatus | None = None
    """The child's terminal status (stage closed)."""
    result: JsonValue = None
    failure: Failure | None = None

    @model_validator(mode="after")
    def _status_when_closed(self) -> ChildReportPayload:
        if self.stage == "closed" and (self.status is None or not self.status.is_terminal):
            raise ValueError("a closed child report needs the child's terminal status")
        return self


# --- commands -----------------------------------------------------------------------


class StartWorkflow(_Envelope):
    type: Literal["StartWorkflow"] = "StartWorkflow"
    payload: StartWorkflowPayload

    @property
    def root_execution_id(self) -> str:
        """The root of the tree the started execution joins: the payload's root, else its
        parent (a child of a root), else itself (a root). The one rule, for the engine
        and the API's answer to a start."""
        p = self.payload
        return p.root_execution_id or p.parent_execution_id or self.execution_id


class CancelExecution(_Envelope):
    type: Literal["CancelExecution"] = "CancelExecution"
    payload: ReasonPayload = ReasonPayload()


class TerminateExecution(_Envelope):
    type: Literal["TerminateExecution"] = "TerminateExecution"
    payload: ReasonPayload = ReasonPayload()


class SignalExecution(_Envelope):
    type: Literal["SignalExecution"] = "SignalExecution"
    payload: SignalPayload


class ResetExecution(_Envelope):
    type: Literal["ResetExecution"] = "ResetExecution"
    payload: ResetPayload


class CompleteExecution(_Envelope):
    type: Literal["CompleteExecution"] = "CompleteExecution"
    payload: CompletePayload


class FailExecution(_Envelope):
    type: Literal["FailExecution"] = "FailExecution"
    payload: FailPayload


class ContinueAsNew(_Envelope):
    type: Literal["ContinueAsNew"] = "ContinueAsNew"
    payload: ContinueAsNewPayload


class RecordActivityTask(_Envelope):
    type: Literal["RecordActivityTask"] = "RecordActivityTask"
    payload: ActivityReportPayload


class RecordCustomTask(_Envelope):
    type: Literal["RecordCustomTask"] = "RecordCustomTask"
    payload: CustomTaskReportPayload


class TimeOutExecution(_Envelope):
    """Fired by the timers service when a run's execution timeout passes."""

    type: Literal["TimeOutExecution"] = "TimeOutExecution"
    payload: TimerPayload


class RetryExecution(_Envelope):
    """Fired by the timers service when a retry back-off has passed."""

    type: Literal["RetryExecution"] = "RetryExecution"
    payload: TimerPayload


class CompleteWorkflowTask(_Envelope):
    """A worker ran the workflow code from a replay of the history up to `task_seq`."""

    type: Literal["CompleteWorkflowTask"] = "CompleteWorkflowTask"
    payload: CompleteWorkflowTaskPayload


class FailWorkflowTask(_Envelope):
    """A worker could not run the workflow code (non-determinism, an error outside it)."""

    type: Literal["FailWorkflowTask"] = "FailWorkflowTask"
    payload: FailWorkflowTaskPayload


class FireTimer(_Envelope):
    """Fired by the timers service when a pending timer of a run is due."""

    type: Literal["FireTimer"] = "FireTimer"
    payload: FireTimerPayload


class RecordChildWorkflow(_Envelope):
    """Derived by the engine from a child's stream, sent to the parent's execution."""

    type: Literal["RecordChildWorkflow"] = "RecordChildWorkflow"
    payload: ChildReportPayload


Command = Annotated[
    StartWorkflow
    | CancelExecution
    | TerminateExecution
    | SignalExecution
    | ResetExecution
    | CompleteExecution
    | FailExecution
    | ContinueAsNew
    | RecordActivityTask
    | RecordCustomTask
    | TimeOutExecution
    | RetryExecution
    | CompleteWorkflowTask
    | FailWorkflowTask
    | FireTimer
    | RecordChildWorkflow,
    Field(discriminator="type"),
]

COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


def parse_command(raw: bytes | str) -> Command:
    """Parse one record of `workflows.commands`; raises pydantic.ValidationError."""
    return COMMAND_ADAPTER.validate_json(raw)
