"""Stored events in the public shape the official SDK models (API.md §8), and their
positions as stream ids.

Only the 17 public event types may reach a client: one frame with any other type ends
the SDK's iteration with an error. Runstore's own types are mapped or left out:

| stored type                          | public shape                                        |
|--------------------------------------|-----------------------------------------------------|
| WORKFLOW_EXECUTION_SIGNALED          | CUSTOM_TASK_COMPLETED, custom_task_type `runstore.signal` |
| WORKFLOW_EXECUTION_RETRY_SCHEDULED   | WORKFLOW_TASK_FAILED (the attempt's failure)        |
| WORKFLOW_EXECUTION_RETRY_STARTED     | left out                                            |
| WORKFLOW_RUN_RESET                   | left out (the new run's STARTED follows)            |
| WORKFLOW_EXECUTION_TERMINATED        | left out: the execution stream ends there           |
| WORKFLOW_EXECUTION_TIMED_OUT         | left out: the execution stream ends there           |
| WORKFLOW_EXECUTION_UPDATE_ACCEPTED   | CUSTOM_TASK_STARTED, custom_task_type `runstore.update` |
| WORKFLOW_EXECUTION_UPDATE_COMPLETED  | CUSTOM_TASK_COMPLETED (or _FAILED), `runstore.update` |

The worker protocol's bookkeeping (WORKFLOW_TASK_COMPLETED, TIMER_*, MARKER_RECORDED,
WORKFLOW_EXECUTION_CANCEL_REQUESTED, CHILD_WORKFLOW_*) is left out; a child's own events
carry its root and parent ids.

Positions: an event sits at `(seq, index)` in its execution's stream. Its
`broker_sequence` is `seq * 1_000_000 + index` (commit 3, event 1 → 3000001): one
integer per event, increasing along the execution, computable by any subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.common import Failure, Payload
from schemas.events import Event, EventType
from services.common.clock import ns_to_datetime

SEQ_FACTOR = 1_000_000
"""Events per commit never reach this (a commit is one document of at most 16 MiB)."""

SIGNAL_TASK_TYPE = "runstore.signal"
UPDATE_TASK_TYPE = "runstore.update"
NAMESPACE = "default"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event sits in its execution's stream; ordered as the stream is."""

    seq: int
    index: int

    @classmethod
    def of(cls, event: Event) -> Position:
        return cls(event.seq, event.index)

    @classmethod
    def from_sequence(cls, sequence: int) -> Position:
        seq, index = divmod(sequence, SEQ_FACTOR)
        return cls(seq, index)

    @property
    def sequence(self) -> int:
        return self.seq * SEQ_FACTOR + self.index


BEFORE_ALL = Position(0, -1)


def parse_position(text: str) -> Position:
    """A position from a stream id: `broker_sequence` digits, or an event id
    `{execution_id}:{seq}:{index}`. Raises ValueError."""
    text = text.strip()
    if _digits(text):
        return Position.from_sequence(int(text))
    parts = text.rsplit(":", 2)
    if len(parts) == 3 and _digits(parts[1]) and _digits(parts[2]):
        return Position(int(parts[1]), int(parts[2]))
    raise ValueError(f"{text!r} is neither a broker_sequence nor an event id")


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 30


def _payload(value: Payload | None) -> dict[str, Any]:
    """`{type, value}` (+ `encoding_options` when set): `value` is required, even null."""
    payload = value or Payload()
    out: dict[str, Any] = {"type": payload.type, "value": payload.value}
    if payload.encoding_options:
        out["encoding_options"] = payload.encoding_options
    return out


def _failure(value: Failure | None) -> dict[str, Any]:
    return (value or Failure(message="")).model_dump(exclude_none=True)


def public_attributes(event: Event) -> tuple[str, dict[str, Any]] | None:
    """The public event type and attributes of a stored event; None to leave it out."""
    t = event.type
    a: Any = event.attributes
    if t is EventType.WORKFLOW_EXECUTION_STARTED:
        attrs: dict[str, Any] = {
            "task_id": a.task_id,
            "workflow_name": a.workflow_name,
            "input": _payload(a.input),
            "attempt": a.attempt,
        }
        if a.display_name is not None:
            attrs["display_name"] = a.display_name
        return t.value, attrs
    if t is EventType.WORKFLOW_EXECUTION_COMPLETED:
        return t.value, {"task_id": a.task_id, "result": _payload(a.result), "attempt": a.attempt}
    if t is EventType.WORKFLOW_EXECUTION_FAILED:
        return t.value, {"task_id": a.task_id, "failure": _failure(a.failure), "attempt": a.attempt}
    if t is EventType.WORKFLOW_EXECUTION_CANCELED:
        return t.value, {"task_id": a.task_id, "reason": a.reason, "attempt": a.attempt}
    if t is EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        return t.value, {
            "task_id": a.task_id,
            "new_execution_run_id": a.new_execution_run_id,
            "new_execution_id": a.new_execution_id,
            "workflow_name": a.workflow_name,
            "input": _payload(a.input),
        }
    if t is EventType.WORKFLOW_TASK_TIMED_OUT:
        return t.value, {"task_id": a.task_id, "timeout_type": a.timeout_type}
    if t is EventType.WORKFLOW_TASK_FAILED:
        return t.value, {"task_id": a.task_id, "failure": _failure(a.failure)}
    if t.value.startswith("CUSTOM_TASK_"):
        attrs = {"custom_task_id": a.custom_task_id, "custom_task_type": a.custom_task_type}
        if a.payload is not None or t in _CUSTOM_NEEDS_PAYLOAD:
            attrs["payload"] = _payload(a.payload)
        if t is EventType.CUSTOM_TASK_FAILED:
            attrs["failure"] = _failure(a.failure)
        if t is EventType.CUSTOM_TASK_TIMED_OUT:
            attrs["timeout_type"] = a.timeout_type
        if t is EventType.CUSTOM_TASK_CANCELED:
            attrs["reason"] = a.reason
        return t.value, attrs
    if t.value.startswith("ACTIVITY_TASK_"):
        attrs = {"task_id": a.task_id, "activity_name": a.activity_name}
        if t is EventType.ACTIVITY_TASK_STARTED:
            attrs["input"] = _payload(a.input)
        elif t is EventType.ACTIVITY_TASK_COMPLETED:
            attrs["result"] = _payload(a.result)
        else:
            attrs["attempt"] = a.attempt
            attrs["failure"] = _failure(a.failure)
        return t.value, attrs
    if t is EventType.WORKFLOW_EXECUTION_SIGNALED:
        return EventType.CUSTOM_TASK_COMPLETED.value, {
            "custom_task_id": event.event_id,
            "custom_task_type": SIGNAL_TASK_TYPE,
            "payload": {
                "type": "json",
                "value": {"signal_name": a.signal_name, "input": a.input.value},
            },
        }
    if t is EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED:
        return EventType.WORKFLOW_TASK_FAILED.value, {
            "task_id": a.task_id,
            "failure": _failure(a.failure),
        }
    if t is EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
        return EventType.CUSTOM_TASK_STARTED.value, {
            "custom_task_id": a.update_id,
            "custom_task_type": UPDATE_TASK_TYPE,
            "payload": {
                "type": "json",
                "value": {"update_name": a.update_name, "input": a.input.value},
            },
        }
    if t is EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED:
        update = {"custom_task_id": a.update_id, "custom_task_type": UPDATE_TASK_TYPE}
        if a.failure is not None:
            return EventType.CUSTOM_TASK_FAILED.value, {**update, "failure": _failure(a.failure)}
        return EventType.CUSTOM_TASK_COMPLETED.value, {**update, "payload": _payload(a.result)}
    return None


_CUSTOM_NEEDS_PAYLOAD = {
    EventType.CUSTOM_TASK_IN_PROGRESS,
    EventType.CUSTOM_TASK_COMPLETED,
}


def public_event(event: Event) -> dict[str, Any] | None:
    """The event envelope of API.md §8.1, or None for an event clients must not see."""
    mapped = public_attributes(event)
    if mapped is None:
        return None
    event_type, attributes = mapped
    return {
        "event_id": event.event_id,
        "event_type": event_type,
        "event_timestamp": event.timestamp_ns,
        "root_workflow_exec_id": event.root_execution_id,
        "parent_workflow_exec_id": event.parent_execution_id,
        "workflow_exec_id": event.execution_id,
        "workflow_run_id": event.run_id,
        "workflow_name": event.workflow_name,
        "attributes": attributes,
    }


def sse_payload(event: Event) -> dict[str, Any] | None:
    """The SSE data object (`StreamEventSsePayload`, API.md §7.3) of an event."""
    data = public_event(event)
    if data is None:
        return None
    return {
        "stream": event.execution_id,
        "broker_sequence": Position.of(event).sequence,
        "timestamp": ns_to_datetime(event.timestamp_ns).isoformat().replace("+00:00", "Z"),
        "workflow_context": {
            "namespace": NAMESPACE,
            "workflow_name": event.workflow_name,
            "workflow_exec_id": event.execution_id,
            "parent_workflow_exec_id": event.parent_execution_id,
            "root_workflow_exec_id": event.root_execution_id,
        },
        "data": data,
    }
