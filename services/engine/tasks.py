"""Work for workers that a commit calls for (pure: derived from the commit alone, so a
re-published commit yields the same tasks)."""

from __future__ import annotations

from typing import Literal

from schemas.commits import Commit
from schemas.events import EventType
from schemas.tasks import WorkflowTask

# The events that give the workflow code something new (docs/worker-protocol.md) and the
# task each calls for.
_TASK_KINDS: dict[EventType, Literal["run", "signal", "stop"]] = {
    EventType.WORKFLOW_EXECUTION_STARTED: "run",
    EventType.WORKFLOW_EXECUTION_RETRY_STARTED: "run",
    EventType.WORKFLOW_EXECUTION_SIGNALED: "signal",
    EventType.TIMER_FIRED: "run",
    EventType.CHILD_WORKFLOW_STARTED: "run",
    EventType.CHILD_WORKFLOW_START_FAILED: "run",
    EventType.CHILD_WORKFLOW_CLOSED: "run",
    EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "run",
    EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED: "run",
    EventType.WORKFLOW_EXECUTION_CANCELED: "stop",
    EventType.WORKFLOW_EXECUTION_TERMINATED: "stop",
    EventType.WORKFLOW_EXECUTION_TIMED_OUT: "stop",
}
_RUN_OPENING = frozenset(
    {EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_RETRY_STARTED}
)
# Activity events call for a task only when reported asynchronously (RecordActivityTask);
# in a CompleteWorkflowTask the worker that ran the activity already goes on.
_ASYNC_ACTIVITY = frozenset(
    {
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.ACTIVITY_TASK_RETRYING,
        EventType.ACTIVITY_TASK_FAILED,
    }
)


def tasks_for(commit: Commit) -> list[WorkflowTask]:
    """The tasks a commit's events call for, in event order."""
    tasks: list[WorkflowTask] = []
    started = commit.state.get("started") or {}
    for event in commit.events:
        kind = _TASK_KINDS.get(event.type)
        if kind is None:
            if event.type not in _ASYNC_ACTIVITY or commit.command_type != "RecordActivityTask":
                continue
            kind = "run"
        # An attribute the event's kind lacks read from the model's fields, not by
        # `getattr(…, default)`: on a pydantic model a missing name goes through its
        # Python `__getattr__` and an AttributeError (~1-2 µs each, one or two per task).
        attrs = event.attributes.__dict__
        payload = attrs.get("input")
        tasks.append(
            # Of a stored commit's values: not validated again (one per command or more).
            WorkflowTask.trusted(
                task_id=event.event_id,
                kind=kind,
                execution_id=event.execution_id,
                run_id=event.run_id,
                seq=event.seq,
                workflow_name=event.workflow_name,
                attempt=attrs.get("attempt")
                if event.type in _RUN_OPENING
                else int(commit.state.get("attempt") or 1),
                input=None if payload is None else getattr(payload, "value", None),
                signal_name=attrs.get("signal_name"),
                # The run's deployment routes every task of it (the STARTED event's own,
                # else the state's after the commit).
                deployment_name=attrs.get("deployment_name")
                if event.type is EventType.WORKFLOW_EXECUTION_STARTED
                else started.get("deployment_name"),
                request_id=None,
                name=None,
                user_id=None,
                timestamp_ns=event.timestamp_ns,
            )
        )
    return tasks
