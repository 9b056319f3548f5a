"""An execution session: one client's view of one execution's events.

Its stored history first (commits, read by `_id` through the CommitLog), then live
events from the in-process fanout. Stream ids are the event's `broker_sequence`
(`seq * 1_000_000 + index`); resuming after an id delivers exactly the events after it.
The subscription is made *before* history is read and live events at or before the last
delivered position are skipped: since the engine stores a commit before it publishes its
events, nothing falls between the two. A LIVE stream reads where the stored history ends
instead (its newest commit) and starts after it, for the same reason. A subscriber that
falls behind re-reads the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from schemas.common import ExecutionStatus
from schemas.events import Event, closes_run
from services.api.event_fanout import EventFanout, SubscriberOverflow
from services.api.public_events import BEFORE_ALL, Position, sse_payload
from services.api.sse import KEEPALIVE, NO_FILTER, EventFilter, frame
from services.common.commit_log import CommitLog, newest_commit

log = logging.getLogger(__name__)

Document = dict[str, Any]


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
                if not anchored:
                    # LIVE from now: what is stored already is not "next", even when its
                    # events reach the topic after this subscription (the engine answers
                    # a command once it is stored and publishes its events after that).
                    anchored = await self._anchor_at_newest()
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

    async def _anchor_at_newest(self) -> bool:
        """Start after the newest stored event (True): later live events must follow it,
        and a gap is filled from the store as for any anchored stream. False when nothing
        is stored: the first live event anchors the stream."""
        newest = await newest_commit(self.commits.get, self.execution_id)
        if newest is None or not newest.events:
            return False
        self._last = max(self._last, Position.of(newest.events[-1]))
        return True

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
