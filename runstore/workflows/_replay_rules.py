"""How a run's history reads back: which events are inputs, which resolve something the
code waits on, which close the run; how a step the code issues is matched against the
event the history recorded at its place; and the ids of activity deadline timers."""

from __future__ import annotations

from typing import Any

from schemas.commands import (
    FINAL_STEP_KINDS,
    ActivityStep,
    CancelTimerStep,
    MarkerStep,
    StartChildStep,
    StartTimerStep,
    Step,
    UpdateAcceptedStep,
    UpdateCompletedStep,
)
from schemas.events import Event, EventType

ACTIVITY_OUTCOMES = frozenset(
    {
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.ACTIVITY_TASK_RETRYING,
        EventType.ACTIVITY_TASK_FAILED,
    }
)
RESOLUTIONS = ACTIVITY_OUTCOMES | {EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED}
"""Events that resolve what the code waits on. Inside a workflow-task commit they are what
the live worker fed the code while it was idle; outside one they are inputs (an activity
reported on its own, RecordActivityTask)."""
INPUTS = frozenset(
    {
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.TIMER_FIRED,
        EventType.CHILD_WORKFLOW_STARTED,
        EventType.CHILD_WORKFLOW_START_FAILED,
        EventType.CHILD_WORKFLOW_CLOSED,
        EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED,
    }
)
FINAL_EVENTS = frozenset(
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
OPENS_ATTEMPT = frozenset(
    {EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_RETRY_STARTED}
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

# --- activity deadline timers ----------------------------------------------------------

_DEADLINE_PREFIX = "activity:"


def deadline_timer_id(activity_id: str, attempt: int, renewal: int) -> str:
    """The durable timer that watches a detached activity attempt (docs/workers.md): if no
    report came when it fires, the attempt is timed out. A renewal gets the next number."""
    return f"{_DEADLINE_PREFIX}{activity_id}:{attempt}:{renewal}"


def parse_deadline(timer_id: str) -> tuple[str, int, int] | None:
    """(activity id, attempt, renewal) of a deadline timer id; None for any other timer."""
    if not timer_id.startswith(_DEADLINE_PREFIX):
        return None
    parts = timer_id[len(_DEADLINE_PREFIX) :].rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


# --- matching steps against the history ------------------------------------------------


def _step_key(step: Step) -> tuple[str, str | None]:
    return (step.kind, getattr(step, "stage", None) if step.kind == "activity" else None)


def matches(step: Step, event: Event) -> bool:
    """Whether `event` is what the engine records for `step` (ids and names agree)."""
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


def recorded_as_sent(steps: list[Step], events: list[Event]) -> bool:
    """Whether a workflow-task commit (`events`, WORKFLOW_TASK_COMPLETED first) holds the
    steps a worker sent. Two workers can send different reports under one command id (a
    redelivered task replayed with other timings); the engine keeps the first, so a worker
    must not assume its own report is the one in the history."""
    recorded = events[1:]
    for position, step in enumerate(steps):
        if step.kind in FINAL_STEP_KINDS:
            return position < len(recorded) and recorded[position].type in FINAL_EVENTS
        if position >= len(recorded) or not matches(step, recorded[position]):
            return False
    return True


def describe_step(step: Step) -> str:
    keys = {
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
    details = {k: v for k, v in step.model_dump().items() if k in keys}
    return f"{step.kind} {details}"


def describe_event(event: Event) -> str:
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
