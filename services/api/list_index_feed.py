"""Loads the API's run list index (services/common/readmodels/list_index.py) and keeps it
as fresh as the projector, from `workflows.events` (docs/read-models.md, "The run list
index").

Bootstrap, without gap or double count:
1. note the projector group's committed offsets on the events topic: the projector
   commits an offset only after writing what came before it, so the store reflects every
   event before those offsets;
2. load every run row from the store (INDEX_FIELDS only, one full scan);
3. read the topic from the offsets of 1 with a consumer of its own, folding each event
   into the index; meanwhile an internal subscription of the API's event fanout
   (event_fanout.py, fed by the one `TopicFeed` of topic_tail.py) buffers every event
   published after it was made (its `start_positions`);
4. once 3 has reached those start positions on every partition, drop that consumer (in
   the same step of the event loop) and fold the subscription's deliveries, skipping those
   3 already folded. The feed is what the API follows anyway (outcomes, the streams, the
   waits of executes): no second fetch per engine batch, and an event a wait has decoded
   is not decoded again. Nothing is missed or folded twice.
The events between 1 and 2 are in the snapshot and come again from the topic: the fold's
position guard makes them change nothing. Everything after 2 comes from the topic. At 4
the index is `ready` and lists use it; until then they go to the store. If more than
`_MAX_QUEUED` deliveries wait to be folded (a long catch-up, a slow gap fill) or the feed
fails, the subscription is lost: a new one is made and 3 goes on (or starts again from
the last folded position). Memory stays bounded; Kafka keeps what was dropped.
Without a fanout (tests, tools) the own consumer of 3 follows the topic for good.

With direct replies, the engine sends the STARTED event of each run a command of this
instance opened along with its outcome (services/engine/replies.py); `fold_started` folds
it at once, so a read right after the answer finds the run here. The same event comes
later from the topic (byte for byte the same record value): folding it again changes
nothing (the fold's position guard), and the feed's subscription skips it before it is
decoded (`_folded_early`). The index is what folding the topic alone makes
(tests/unit/test_list_index_feed_started.py).

A gap (an event whose run row reflects an older seq than the one before it, or an event
of a run the index has never seen that is not its start) is filled from the event store
(`CommitLog.read_after`), as the projector fills its own; then the event is folded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo.asynchronous.database import AsyncDatabase

from schemas.events import Event, EventType
from services.api.event_fanout import (
    EventFanout,
    FanoutFailed,
    SubscriberOverflow,
    Subscription,
    parse_event,
)
from services.api.topic_tail import stop_following
from services.common.commit_log import CommitLog
from services.common.kafka_topics import partitions_of
from services.common.mongo import is_ferretdb
from services.common.readmodels.list_index import INDEX_FIELDS, RunListIndex
from services.common.readmodels.store import RUNS
from services.common.settings import ApiSettings, ListIndexMode

log = logging.getLogger(__name__)

Document = dict[str, Any]

_RETRY_SECONDS = 1.0
_SCAN_BATCH = 5000
_SLICE = 100
"""Events folded between two yields to the event loop (~5-10 ms of CPU)."""
_MAX_QUEUED = 10_000
"""Deliveries waiting to be folded past which the index reads on its own again."""
_MAX_EARLY = 10_000
"""STARTED events folded from replies whose topic copy is still to come, at most (an older
one is forgotten: its copy is then decoded and folded, changing nothing)."""


class _Record(Protocol):
    """What the feed reads of a consumed record."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


async def committed_offsets(settings: ApiSettings, group: str, topic: str) -> dict[int, int]:
    """The offsets consumer group `group` has committed on `topic`, by partition (a
    partition it never committed is absent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


class _TooManyRuns(Exception):
    """The index would hold more runs than RUNSTORE_API_LIST_INDEX_MAX_RUNS."""


async def load_runs(
    db: AsyncDatabase[Document], index: RunListIndex, max_runs: int | None = None
) -> int:
    """Put every run row of the store into `index` (newer rows only); how many were read.
    _TooManyRuns past `max_runs`."""
    count = 0
    cursor = db[RUNS].find({}, dict.fromkeys(INDEX_FIELDS, 1)).batch_size(_SCAN_BATCH)
    with index.loading():
        async for doc in cursor:
            try:
                index.put(doc, only_if_newer=True)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("run list index: skipping run document %r: %r", doc.get("_id"), exc)
            count += 1
            if max_runs is not None and count > max_runs:
                raise _TooManyRuns
    return count


class ListIndexFeed:
    """Bootstraps `index` and follows the events topic into it (see the module doc)."""

    def __init__(
        self,
        settings: ApiSettings,
        db: AsyncDatabase[Document],
        commits: CommitLog,
        index: RunListIndex,
        fanout: EventFanout | None = None,
    ) -> None:
        """With `fanout`, the index takes its events from it once caught up; without, it
        follows the topic with its own consumer."""
        self._settings = settings
        self._db = db
        self._commits = commits
        self._index = index
        self._topic = settings.topics.events
        self._fanout = fanout
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.events_applied = 0
        self.subscriptions_lost = 0
        self._sub: Subscription | None = None
        self._fold_next: dict[int, int] = {}
        """By partition: the next offset to fold from the subscription."""
        self.started_from_replies = 0
        self._wanted: bool | None = None
        self._folded_early: OrderedDict[bytes, bytes] = OrderedDict()
        """Execution id (as the record key) -> the record value of the STARTED event of a
        run of it `fold_started` folded, until its copy from the topic is skipped."""

    async def wanted(self) -> bool:
        """Whether this instance keeps the index: the setting, or for `auto` the server
        (FerretDB: yes). Asked once; `start` follows the same answer."""
        if self._wanted is None:
            mode = self._settings.api_list_index
            if mode is ListIndexMode.AUTO:
                mode = ListIndexMode.MEMORY if await is_ferretdb(self._db) else ListIndexMode.STORE
            self._wanted = mode is not ListIndexMode.STORE
        return self._wanted

    async def start(self) -> None:
        """Starts the bootstrap in the background (lists use the store until it is done),
        if the setting (or, for `auto`, the server) asks for the index (`wanted`). After
        the fanout's start."""
        if not await self.wanted():
            log.info("run list index: off (lists are store queries)")
            return
        self._task = asyncio.create_task(self._run(), name="list-index-feed")

    async def stop(self) -> None:
        await stop_following(self._task, self._consumer)
        self._task, self._consumer = None, None
        self._unsubscribe()

    def _subscribe(self) -> Subscription:
        """A new subscription to every event from now on (instead of the one there was)."""
        assert self._fanout is not None
        self._unsubscribe()
        self._sub = self._fanout.subscribe(limit=_MAX_QUEUED, internal=True, skip=self._skip)
        return self._sub

    def _unsubscribe(self) -> None:
        if self._sub is not None and self._fanout is not None:
            self._fanout.unsubscribe(self._sub)
        self._sub = None

    async def _run(self) -> None:
        while True:
            try:
                await self._bootstrap_and_follow()
            except asyncio.CancelledError:
                raise
            except _TooManyRuns:
                self._unsubscribe()
                self._index.clear()
                await self._stop_consumer()
                log.warning(
                    "run list index: more than RUNSTORE_API_LIST_INDEX_MAX_RUNS=%d runs; "
                    "dropped, lists query the store",
                    self._settings.api_list_index_max_runs,
                )
                return
            except Exception:  # the broker or the store failed: start over
                log.exception("run list index: feed failed; reloading")
                self._index.ready = False
                self._unsubscribe()
                await self._stop_consumer()
                await asyncio.sleep(_RETRY_SECONDS)

    async def _stop_consumer(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _bootstrap_and_follow(self) -> None:
        began = time.monotonic()
        group = self._settings.group(self._settings.api_list_index_group)
        offsets = await committed_offsets(self._settings, group, self._topic)
        self._index.clear()
        self._folded_early.clear()
        rows = await load_runs(self._db, self._index, self._settings.api_list_index_max_runs)
        log.info(
            "run list index: %d runs loaded in %.1fs; catching up from the projector's offsets",
            rows,
            time.monotonic() - began,
        )
        await self._read_on_its_own(offsets)
        log.info(
            "run list index: ready, %d runs (%.1fs after start)",
            len(self._index),
            time.monotonic() - began,
        )
        while True:  # from the fanout (on its own again after a lost subscription)
            sub = self._sub
            assert sub is not None
            await sub.wait()
            try:
                deliveries = sub.take()
            except (SubscriberOverflow, FanoutFailed):
                self.subscriptions_lost += 1
                await self._read_on_its_own(dict(self._fold_next))
                continue
            for n, delivery in enumerate(deliveries, 1):
                if delivery.offset >= self._fold_next.get(delivery.partition, 0):
                    if not self._apply_in_order(delivery.event):
                        await self._apply(delivery.event)
                    self._fold_next[delivery.partition] = delivery.offset + 1
                if n % _SLICE == 0:
                    await asyncio.sleep(0)
            self._check_size()

    async def _read_on_its_own(self, start: dict[int, int]) -> None:
        """Fold the topic from `start` (by partition; absent: the oldest kept) with a
        consumer of its own until it reaches the feed's positions; then take the feed's
        records (without a feed: follow the topic for good)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # an offset gone by retention: the oldest kept
            client_id="runstore-api-list-index",
            # aiokafka's default fetch wait (500 ms), as the event fanout: a fetch returns as
            # soon as a record arrives, the wait only paces empty fetches of an idle topic.
        )
        await consumer.start()
        self._consumer = consumer
        partitions = await partitions_of(self._settings, self._topic)
        tps = [TopicPartition(self._topic, p) for p in partitions]
        consumer.assign(tps)
        for tp in tps:
            if start.get(tp.partition, -1) >= 0:
                consumer.seek(tp, start[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        ends = await consumer.end_offsets(tps)
        sub = self._subscribe() if self._fanout is not None else None
        while True:
            if sub is not None:
                if sub.lost:  # overflowed meanwhile (or the feed failed): from now on
                    self.subscriptions_lost += 1
                    sub = self._subscribe()
                positions = {tp.partition: await consumer.position(tp) for tp in tps}
                # No await from this comparison to the hand-over: the subscription holds
                # every event from its start positions on; those below `positions` are
                # skipped.
                if all(positions[p] >= sub.start_positions.get(p, 0) for p in positions):
                    self._fold_next = positions
                    self._index.ready = True
                    self._consumer = None
                    await consumer.stop()
                    return
            elif not self._index.ready and await _reached(consumer, ends):
                self._index.ready = True
                log.info("run list index: ready, %d runs", len(self._index))
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                await self.fold_records(records)
            self._check_size()

    def _check_size(self) -> None:
        if len(self._index) > self._settings.api_list_index_max_runs:
            raise _TooManyRuns

    async def fold_records(self, records: Sequence[_Record]) -> None:
        """Fold consumed event records into the index, in order, letting the rest of the
        event loop run between slices of `_SLICE`: point reads and every other request of
        this API process share it, and a batch holds up to 5,000 (docs/soak.md)."""
        for n, record in enumerate(records, 1):
            event = parse_event(record.value, record.partition, record.offset)
            if event is not None and not self._apply_in_order(event):
                await self._apply(event)
            if n % _SLICE == 0:
                await asyncio.sleep(0)

    def fold_started(self, values: Sequence[bytes]) -> None:
        """Fold the STARTED events (record values as on the events topic) the engine sent
        with its answers (direct replies), before the answers are given: only stored events
        come this way. Nothing while the index is not ready (it is loading: the topic
        brings them)."""
        index = self._index
        if not index.ready:
            return
        early = self._folded_early
        for value in values:
            event = parse_event(value, -1, -1)
            if event is None or event.type is not EventType.WORKFLOW_EXECUTION_STARTED:
                continue
            if index.gap_before(event) is not None:
                continue  # (not for a run's start; the topic's copy fills it)
            if index.seq_of(event.run_id) is not None:
                continue  # folded already (the topic's copy came first): nothing to skip later
            self._fold(event)
            self.started_from_replies += 1
            key = event.execution_id.encode()
            early[key] = value
            early.move_to_end(key)
            if len(early) > _MAX_EARLY:
                early.popitem(last=False)

    def _skip(self, record: Any) -> bool:
        """Whether `record` is the topic's copy of a STARTED event `fold_started` folded:
        the same record value under the same key (folding it would change nothing)."""
        early = self._folded_early
        if not early or record.key is None:
            return False
        value = early.get(record.key)
        if value is None or value != record.value:
            return False
        del early[record.key]
        return True

    def _apply_in_order(self, event: Event) -> bool:
        """Fold `event` if its run lacks no event before it (nearly always: no await, no
        coroutine per event); False if there is a gap, for `_apply` to fill."""
        if self._index.gap_before(event) is not None:
            return False
        self._fold(event)
        self.events_applied += 1
        return True

    async def _apply(self, event: Event) -> None:
        gap = self._index.gap_before(event)
        if gap is not None:
            # Fold the run's missing events from the event store first.
            for commit in await self._commits.read_after(event.execution_id, gap):
                if commit.seq >= event.seq:
                    break
                for missing in commit.events:
                    if missing.run_id == event.run_id:
                        self._fold(missing)
        self._fold(event)
        self.events_applied += 1

    def _fold(self, event: Event) -> None:
        try:
            self._index.apply(event)
        except (KeyError, TypeError, ValueError):
            # A bug to report, not a reason to stop following (or to reload in a loop).
            log.exception("run list index: cannot fold event %s", event.event_id)


async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether the consumer's position is at or past `ends` on every partition."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
