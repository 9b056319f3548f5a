"""A broker session: one client's view of every event its filters accept, across
executions: live events from the fanout. Its stream id is the Kafka position reached on
every partition of `workflows.events` (`kafka:<partition>=<next offset>,…`); resuming
with it reads the missed records from Kafka up to where the live feed took over, as does
a subscriber that fell behind its buffer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Event
from services.api.event_fanout import EventFanout, SubscriberOverflow, read_between
from services.api.public_events import Position, sse_payload
from services.api.sse import KEEPALIVE, NO_FILTER, EventFilter, frame
from services.common.settings import ApiSettings

log = logging.getLogger(__name__)

Document = dict[str, Any]

_KAFKA_ID_PREFIX = "kafka:"


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
