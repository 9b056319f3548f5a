"""Fans `workflows.events` out to every stream subscriber inside an API process, from the
API's `TopicFeed` (topic_tail.py: the consumer that also brings outcomes).

The consumer has no group: it is assigned every partition and starts at the end, so each
API instance sees every event published after it started, whoever consumes what else.
A record is parsed only if some subscriber wants it (subscribers of one execution are
found by the record key, which is the execution id), and once for all of them: the run
list index (list_index_feed.py) is an internal subscriber of every event, so an event a
wait or a stream decodes is not decoded again for the index.

Each subscription notes, when it is made, the offset the fanout will deliver next on
every partition (`start_positions`): whatever was published before is not delivered to
it, whatever comes after is. Streams use that to join history (from MongoDB, or from
Kafka with `read_between`) to live events without gap or overlap.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas.events import EVENT_ADAPTER, Event
from services.api.topic_tail import TopicFeed
from services.common.settings import RunstoreSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    partition: int
    offset: int
    event: Event


class SubscriberOverflow(Exception):
    """The subscriber fell further behind than its buffer: it must re-sync."""


class FanoutFailed(Exception):
    """The live feed itself failed; the subscriber cannot be served."""


class Subscription:
    """What one stream receives: deliveries in the order the fanout read them."""

    def __init__(
        self,
        execution_id: str | None,
        match: Callable[[Event], bool] | None,
        limit: int,
        start_positions: dict[int, int],
        internal: bool = False,
        wake: Callable[[Event], bool] | None = None,
        skip: Callable[[Any], bool] | None = None,
    ) -> None:
        self.execution_id = execution_id
        self.match = match
        self.skip = skip
        """Which records it does not need, told from the record before it is decoded (a
        wildcard's: the run list index's, for the STARTED events a reply brought)."""
        self.start_positions = start_positions
        self.internal = internal
        """Not a stream's (the run list index's): not counted as a subscriber."""
        self._wake_on = wake
        """Which deliveries wake a waiting reader (None: every one); the others are
        buffered until one does, or the reader's wait runs out."""
        self._limit = limit
        self._items: deque[Delivery] = deque()
        self._wake = asyncio.Event()
        self._overflowed = False
        self._failure: str | None = None

    def offer(self, delivery: Delivery) -> None:
        if self._overflowed:
            return
        if len(self._items) >= self._limit:
            # Never block the fanout for one slow reader: drop its buffer and let it
            # re-sync from the store or the broker (see SubscriberOverflow).
            self._overflowed = True
            self._items.clear()
        else:
            self._items.append(delivery)
            if self._wake_on is not None and not self._wake_on(delivery.event):
                return
        self._wake.set()

    def fail(self, reason: str) -> None:
        self._failure = reason
        self._wake.set()

    @property
    def lost(self) -> bool:
        """Overflowed or failed: deliveries are missing from here on."""
        return self._overflowed or self._failure is not None

    async def wait(self) -> None:
        """Until a delivery is buffered, or the subscription is lost."""
        while not self._items and not self.lost:
            self._wake.clear()
            await self._wake.wait()

    def take(self) -> list[Delivery]:
        """Every delivery buffered now, in order (raises as `next` does once they are
        taken and the subscription is lost)."""
        if not self._items:
            if self._overflowed:
                raise SubscriberOverflow
            if self._failure is not None:
                raise FanoutFailed(self._failure)
        taken = list(self._items)
        self._items.clear()
        return taken

    async def take_when_woken(self, wait_seconds: float) -> list[Delivery]:
        """Every delivery buffered once one that wakes the subscription has come, or once
        `wait_seconds` have passed (then those buffered meanwhile, perhaps none). Raises
        as `next` does once the subscription is lost and its buffer taken."""
        if not self._wake.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_seconds)
        self._wake.clear()
        return self.take()

    async def next(self, wait_seconds: float) -> Delivery | None:
        """The next delivery, or None after `wait_seconds` of silence."""
        while not self._items:
            if self._overflowed:
                raise SubscriberOverflow
            if self._failure is not None:
                raise FanoutFailed(self._failure)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait_seconds)
            except TimeoutError:
                return None
        return self._items.popleft()


class EventFanout:
    def __init__(
        self,
        settings: RunstoreSettings,
        queue_size: int = 2000,
        feed: TopicFeed | None = None,
    ) -> None:
        """With `feed`, events come through it (whoever made it starts it before
        `start`); without, the fanout follows the topic with a consumer of its own."""
        self._settings = settings
        self._topic = settings.topics.events
        self._queue_size = queue_size
        self._positions: dict[int, int] = {}
        self._by_execution: dict[str, set[Subscription]] = {}
        self._wildcards: set[Subscription] = set()
        self._skippers: set[Subscription] = set()
        """The wildcards with a `skip`."""
        self._own_feed = feed is None
        self._feed = feed if feed is not None else TopicFeed(settings, "runstore-api-events")
        self._feed.follow(self._topic, self._deliver, self._fail_all)
        self.records_seen = 0

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def subscriber_count(self) -> int:
        wildcards = sum(1 for s in self._wildcards if not s.internal)
        return wildcards + sum(len(s) for s in self._by_execution.values())

    async def start(self) -> None:
        """Once the feed has started (its own feed: starts it)."""
        if self._own_feed:
            await self._feed.start()
        # Records delivered since the feed started are past its ends: keep their positions.
        for partition, end in self._feed.ends(self._topic).items():
            self._positions.setdefault(partition, end)

    async def stop(self) -> None:
        if self._own_feed:
            await self._feed.stop()
        self._fail_all("the API is shutting down")

    def _fail_all(self, reason: str) -> None:
        for sub in [*self._wildcards, *(s for v in self._by_execution.values() for s in v)]:
            sub.fail(reason)

    def subscribe(
        self,
        *,
        execution_id: str | None = None,
        match: Callable[[Event], bool] | None = None,
        limit: int | None = None,
        internal: bool = False,
        wake: Callable[[Event], bool] | None = None,
        skip: Callable[[Any], bool] | None = None,
    ) -> Subscription:
        """Deliveries of one execution's events (`execution_id`), or of every event that
        `match` accepts (all events if neither is given), buffered up to `limit` (default:
        the fanout's queue size). `internal`: not a stream's, not counted. `wake`: which
        deliveries wake a waiting reader (default: all). `skip` (a wildcard's only): which
        records it does without, asked before decoding (a record only skippers would get
        is not decoded)."""
        sub = Subscription(
            execution_id,
            match,
            self._queue_size if limit is None else limit,
            dict(self._positions),
            internal,
            wake,
            skip,
        )
        if execution_id is not None:
            if skip is not None:
                raise ValueError("skip is a wildcard subscription's")
            self._by_execution.setdefault(execution_id, set()).add(sub)
        else:
            self._wildcards.add(sub)
            if skip is not None:
                self._skippers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.execution_id is None:
            self._wildcards.discard(sub)
            self._skippers.discard(sub)
            return
        subs = self._by_execution.get(sub.execution_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_execution[sub.execution_id]

    def _deliver(self, partition: int, records: Sequence[Any]) -> None:
        # Synchronous from first record to last: no subscribe() sees a position between.
        try:
            if self._by_execution or self._wildcards:
                for record in records:
                    self._dispatch(partition, record)
        finally:
            # Past these records even if a subscriber's filter raised (the feed logs it).
            if records:
                self._positions[partition] = records[-1].offset + 1
            self.records_seen += len(records)

    def _dispatch(self, partition: int, record: Any) -> None:
        targets: set[Subscription] | None = None
        if self._by_execution and record.key is not None:
            targets = self._by_execution.get(record.key.decode("utf-8", "replace"))
        wildcards = self._wildcards
        if not targets and not wildcards:
            return
        skipped: list[Subscription] | None = None
        if self._skippers:
            skipped = [sub for sub in self._skippers if sub.skip(record)]  # type: ignore[misc]
            if not targets and len(skipped) == len(wildcards):
                return  # nobody needs it decoded
        event = parse_event(record.value, partition, record.offset)
        if event is None:
            return
        delivery = Delivery(partition, record.offset, event)
        # (No copies of the sets: `offer` never subscribes or unsubscribes.)
        if targets:
            for sub in targets:
                sub.offer(delivery)
        for sub in wildcards:
            if (sub.match is None or sub.match(event)) and not (skipped and sub in skipped):
                sub.offer(delivery)


def parse_event(raw: bytes | None, partition: int, offset: int) -> Event | None:
    if not raw:
        return None
    try:
        return EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        # Only the engine writes this topic: an unreadable record is a bug to report,
        # not a reason to stop everyone's streams.
        log.error("skipping unreadable event at %s/%s: %s", partition, offset, exc)
        return None


async def read_between(
    settings: RunstoreSettings,
    start: dict[int, int],
    end: dict[int, int],
    idle_seconds: float = 1.0,
) -> AsyncIterator[Delivery | None]:
    """Events of `workflows.events` at offsets `start[p] <= offset < end[p]`, partition by
    partition in offset order; None after each `idle_seconds` without records (so a
    caller can send keep-alives). A short-lived consumer, used only to catch up."""
    wanted = {p: end[p] for p, s in start.items() if p in end and s < end[p]}
    if not wanted:
        return
    topic = settings.topics.events
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="runstore-api-catch-up",
    )
    await consumer.start()
    try:
        tps = {p: TopicPartition(topic, p) for p in wanted}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, start[p])
        while wanted:
            batches = await consumer.getmany(
                *[tps[p] for p in wanted], timeout_ms=int(idle_seconds * 1000), max_records=1000
            )
            if not batches:
                yield None
            for tp, records in batches.items():
                stop_at = wanted.get(tp.partition)
                if stop_at is None:
                    continue
                for record in records:
                    if record.offset >= stop_at:
                        break
                    event = parse_event(record.value, tp.partition, record.offset)
                    if event is not None:
                        yield Delivery(tp.partition, record.offset, event)
            for p in list(wanted):
                if await consumer.position(tps[p]) >= wanted[p]:
                    del wanted[p]
    finally:
        await consumer.stop()
