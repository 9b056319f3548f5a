"""Server-sent event streams as the official SDK reads them (API.md §7): frames, the
events stream's filters, and turning a failure after the 200 into an error frame.

Frames: `id: <stream id>`, `event: event`, one `data:` line of JSON (the
`StreamEventSsePayload`), a blank line. Silence is broken by `: keep-alive` comments,
failures after the 200 by an `event: error` frame with `{"error", "reason"}`.

Two kinds of session produce them: one execution's events (execution_stream.py), and
many executions' live events from Kafka (broker_stream.py). A subscriber that falls
behind its buffer re-syncs (from the store or from Kafka), so a slow client costs itself
time, not events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from schemas.events import Event
from services.api.event_fanout import FanoutFailed

log = logging.getLogger(__name__)

Document = dict[str, Any]

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Keep proxies from caching or buffering a stream."""
EVENT_NAME = "event"


# --- frames ---------------------------------------------------------------------------


def frame(data: Any, *, event_id: str | None = None, event: str = EVENT_NAME) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


def error_frame(message: str, reason: str = "internal_error") -> bytes:
    """Ends a stream visibly: the SDK raises StreamDisconnectedError(error, reason)."""
    return frame({"error": message, "reason": reason}, event="error")


# --- filters --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The events stream's filters; None means "not given" (the SDK sends `*`)."""

    scope: str | None = None
    activity_name: str | None = None
    activity_id: str | None = None
    workflow_name: str | None = None
    workflow_exec_id: str | None = None
    root_workflow_exec_id: str | None = None
    parent_workflow_exec_id: str | None = None
    stream: str | None = None
    event_types: frozenset[str] | None = None

    def envelope_matches(self, event: Event) -> bool:
        """The checks that need no mapping (cheap: run by the fanout for every event)."""
        return (
            (self.workflow_exec_id is None or event.execution_id == self.workflow_exec_id)
            and (self.stream is None or event.execution_id == self.stream)
            and (
                self.root_workflow_exec_id is None
                or event.root_execution_id == self.root_workflow_exec_id
            )
            and (
                self.parent_workflow_exec_id is None
                or event.parent_execution_id == self.parent_workflow_exec_id
            )
            and (self.workflow_name is None or event.workflow_name == self.workflow_name)
        )

    def payload_matches(self, payload: Document) -> bool:
        data = payload["data"]
        event_type: str = data["event_type"]
        attributes: Document = data["attributes"]
        is_activity = event_type.startswith("ACTIVITY_TASK_")
        if self.scope == "activity" and not is_activity:
            return False
        if self.scope == "workflow" and is_activity:
            return False
        if self.activity_name is not None and (
            not is_activity or attributes.get("activity_name") != self.activity_name
        ):
            return False
        if self.activity_id is not None and (
            not is_activity or attributes.get("task_id") != self.activity_id
        ):
            return False
        return self.event_types is None or event_type in self.event_types


NO_FILTER = EventFilter()


# --- guarding -------------------------------------------------------------------------


async def guarded(
    frames: AsyncIterator[bytes], describe: Callable[[], str]
) -> AsyncIterator[bytes]:
    """Turns a failure after the 200 into an error frame instead of a silent close."""
    try:
        async for chunk in frames:
            yield chunk
    except FanoutFailed as exc:
        log.warning("%s: %s", describe(), exc)
        yield error_frame(str(exc))
    except Exception as exc:
        log.exception("%s failed", describe())
        yield error_frame(f"stream failed: {type(exc).__name__}: {exc}")


__all__ = [
    "KEEPALIVE",
    "NO_FILTER",
    "SSE_HEADERS",
    "EventFilter",
    "error_frame",
    "frame",
    "guarded",
]
