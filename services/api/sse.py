"""Server-sent event streams as the official SDK reads them (API.md §7).

Frames: `id: <stream id>`, `event: event`, one `data:` line of JSON (the
`StreamEventSsePayload`), a blank line. Silence is broken by `: keep-alive` comments,
failures after the 200 by an `event: error` frame with `{"error", "reason"}`.

Two kinds of session:

- **execution sessions** follow one execution: its stored history (commits in MongoDB,
  read by `_id`), then live events from the in-process fanout. Stream ids are the
  event's `broker_sequence` (`seq * 1_000_000 + index`); resuming after an id delivers
  exactly the events after it. The subscription is made *before* history is read and
  live events at or before the last delivered position are skipped: since the engine
  stores a commit before it publishes its events, nothing falls between the two.
- **broker sessions** follow many executions (filters on root, parent, workflow name …):
  live events from the fanout. Their stream id is the Kafka position reached on every
  partition of `workflows.events` (`kafka:<partition>=<next offset>,…`); resuming with it
  reads the missed records from Kafka up to where the live feed took over.

A subscriber that falls behind its buffer re-syncs the same way (from the store or from
Kafka), so a slow client costs itself time, not events.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.common import ExecutionStatus
from schemas.events import Event, closes_run
from services.api.event_fanout import (
    EventFanout,
    FanoutFailed,
    SubscriberOverflow,
    read_between,
)
from services.api.public_events import BEFORE_ALL, Position, sse_payload
from services.common.commit_log import CommitLog
from services.common.settings import ApiSettings

log = logging.getLogger(__name__)

Document = dict[str, Any]

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Keep proxies from caching or buffering a stream."""
EVENT_NAME = "event"
_KAFKA_ID_PREFIX = "kafka:"


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


# --- execution sessions ---------------------------------------------------------------


@dataclass(slots=True)
class ExecutionStream:
    """One client's view of one execution's events."""

    execution_id: str
    fanout: EventFanout
    commits: CommitLog
    keepalive_seconds: float
    after: Position = BEFORE_ALL
    history: bool = True
    """Replay stored events first (HYBRID, DATABASE); LIVE starts with what comes next."""
    live: bool = True
    """Follow live events (HYBRID, LIVE); DATABASE ends after the stored ones."""
    end_when_closed: bool = True
    """End the stream once the execution is closed (the execution stream does)."""
    closed_at_open: bool = False
    flt: EventFilter = NO_FILTER
    _last: Position = field(init=False)

    async def frames(self) -> AsyncIterator[bytes]:
        self._last = self.after
        anchored = self.history or self.after != BEFORE_ALL
        if not self.history and self.end_when_closed and self.closed_at_open:
            return
        read_store = self.history
        while True:
            sub = self.fanout.subscribe(execution_id=self.execution_id)
            try:
                if read_store:
                    closed = False
                    async for chunk, closed_now in self._stored():
                        closed = closed_now
                        if chunk:
                            yield chunk
                    anchored = True
                    if not self.live or (self.end_when_closed and closed):
                        return
                quiet_since = time.monotonic()
                while True:
                    delivery = await sub.next(self.keepalive_seconds)
                    if delivery is None:
                        yield KEEPALIVE
                        quiet_since = time.monotonic()
                        continue
                    event = delivery.event
                    position = Position.of(event)
                    if position <= self._last:
                        continue  # already delivered (history overlap or re-publication)
                    if anchored and not _follows(self._last, position):
                        # Missed something (the buffer, a slow fanout): the store has it.
                        async for chunk, _ in self._stored():
                            if chunk:
                                yield chunk
                        if position <= self._last:
                            continue
                        log.warning(
                            "stream of %s: no stored event between %s and %s",
                            self.execution_id,
                            self._last,
                            position,
                        )
                    anchored = True
                    self._last = position
                    chunk = self._render(event)
                    if chunk:
                        yield chunk
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since > self.keepalive_seconds:
                        yield KEEPALIVE
                        quiet_since = time.monotonic()
                    if self.end_when_closed and closes_run(event) and await self._closed_by(event):
                        return
            except SubscriberOverflow:
                log.info("stream of %s fell behind; re-reading from the store", self.execution_id)
                read_store = True
            finally:
                self.fanout.unsubscribe(sub)

    async def _stored(self) -> AsyncIterator[tuple[bytes | None, bool]]:
        """Stored events after the last position, each with "is the execution closed"
        as of the commit holding it."""
        seq = max(self._last.seq, 1)
        while (commit := await self.commits.get(self.execution_id, seq)) is not None:
            closed = _terminal(commit.state)
            rendered = False
            for event in commit.events:
                position = Position.of(event)
                if position <= self._last:
                    continue
                self._last = position
                chunk = self._render(event)
                if chunk:
                    rendered = True
                    yield chunk, closed
            if not rendered:
                yield None, closed
            seq += 1

    async def _closed_by(self, event: Event) -> bool:
        """Whether `event` is the last event of a commit that leaves the execution closed
        (a reset commit closes the old run and opens a new one)."""
        commit = await self.commits.get(event.execution_id, event.seq)
        if commit is None:
            return False
        return event.index == len(commit.events) - 1 and _terminal(commit.state)

    def _render(self, event: Event) -> bytes | None:
        payload = sse_payload(event)
        if payload is None or not self.flt.payload_matches(payload):
            return None
        return frame(payload, event_id=str(payload["broker_sequence"]))


def _follows(last: Position, position: Position) -> bool:
    return position in (Position(last.seq, last.index + 1), Position(last.seq + 1, 0))


def _terminal(state: Document) -> bool:
    """Whether a commit's state snapshot leaves the execution closed."""
    status = state.get("status")
    return status is not None and not ExecutionStatus(status).is_open


# --- broker sessions ------------------------------------------------------------------


def encode_kafka_id(positions: dict[int, int]) -> str:
    return _KAFKA_ID_PREFIX + ",".join(f"{p}={o}" for p, o in sorted(positions.items()))


def decode_kafka_id(text: str) -> dict[int, int] | None:
    """Positions from a broker session's stream id; None if `text` is not one."""
    if not text.startswith(_KAFKA_ID_PREFIX):
        return None
    positions: dict[int, int] = {}
    body = text[len(_KAFKA_ID_PREFIX) :]
    for part in body.split(",") if body else []:
        p, sep, o = part.partition("=")
        if not sep or not p.isdigit() or not o.isdigit():
            raise ValueError(f"malformed stream id {text!r}")
        positions[int(p)] = int(o)
    return positions


@dataclass(slots=True)
class BrokerStream:
    """One client's view of every event its filters accept, across executions."""

    fanout: EventFanout
    settings: ApiSettings
    keepalive_seconds: float
    flt: EventFilter = NO_FILTER
    resume_from: dict[int, int] | None = None
    _seen: OrderedDict[str, Position] = field(default_factory=OrderedDict)

    async def frames(self) -> AsyncIterator[bytes]:
        positions = dict(self.resume_from) if self.resume_from is not None else None
        while True:
            sub = self.fanout.subscribe(match=self.flt.envelope_matches)
            try:
                if positions is None:
                    positions = dict(sub.start_positions)
                else:
                    last_sent = time.monotonic()
                    async for delivery in read_between(
                        self.settings, positions, sub.start_positions, self.keepalive_seconds
                    ):
                        if delivery is None:
                            if time.monotonic() - last_sent >= self.keepalive_seconds:
                                yield KEEPALIVE
                                last_sent = time.monotonic()
                            continue
                        positions[delivery.partition] = delivery.offset + 1
                        if self.flt.envelope_matches(delivery.event):
                            chunk = self._render(delivery.event, positions)
                            if chunk:
                                yield chunk
                                last_sent = time.monotonic()
                    for p, o in sub.start_positions.items():
                        positions[p] = max(o, positions.get(p, 0))
                quiet_since = time.monotonic()
                while True:
                    delivery = await sub.next(self.keepalive_seconds)
                    if delivery is not None:
                        positions[delivery.partition] = delivery.offset + 1
                        chunk = self._render(delivery.event, positions)
                        if chunk:
                            yield chunk
                            quiet_since = time.monotonic()
                            continue
                    if time.monotonic() - quiet_since >= self.keepalive_seconds:
                        yield KEEPALIVE
                        quiet_since = time.monotonic()
            except SubscriberOverflow:
                log.info("events stream fell behind; catching up from Kafka")
            finally:
                self.fanout.unsubscribe(sub)

    def _render(self, event: Event, positions: dict[int, int]) -> bytes | None:
        position = Position.of(event)
        seen = self._seen.get(event.execution_id)
        if seen is not None and position <= seen:
            return None  # a re-published commit: already delivered
        self._seen[event.execution_id] = position
        self._seen.move_to_end(event.execution_id)
        if len(self._seen) > self.settings.api_sse_dedup_memory:
            self._seen.popitem(last=False)
        payload = sse_payload(event)
        if payload is None or not self.flt.payload_matches(payload):
            return None
        return frame(payload, event_id=encode_kafka_id(positions))


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
    "BrokerStream",
    "EventFilter",
    "ExecutionStream",
    "decode_kafka_id",
    "encode_kafka_id",
    "error_frame",
    "frame",
    "guarded",
]
