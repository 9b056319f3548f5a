"""Projector wiring: `workflows.events` in batches → runs, executions, history."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from faststream import AckPolicy, FastStream
from faststream.kafka.message import KafkaMessage
from faststream.message import AckStatus
from pydantic import ValidationError

from schemas.events import EVENT_ADAPTER, Event
from services.common import tracing
from services.common.batch_subscriber import batch_subscriber, message_as_body
from services.common.health import Health
from services.common.kafka_io import batch_records, kafka_broker
from services.common.metrics import (
    PROJECTOR_LAG,
    PROJECTOR_LAST_SEQ,
    STORE_LATENCY,
    observe_consumed,
)
from services.common.mongo import (
    ensure_read_models_in_place,
    mongo_client,
    mongo_database,
    read_models_database,
)
from services.common.mongo_commit_log import MongoCommitLog
from services.common.pending_offsets import PendingOffsets
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.settings import ProjectorSettings
from services.common.stream_service import ack_batch, seek_back, service_app
from services.projector.holding import Consumed, HeldEvents
from services.projector.parking import ParkedExecutions, is_transient
from services.projector.projector import Projector

log = logging.getLogger(__name__)


class _ForgetOnRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """The documents a projector remembers are only as good as its being their single
    writer: once partitions move (either way), it reads them again. It also tracks the
    partitions owned (parked executions are retried only by their partition's owner) and
    has the parked ones of newly assigned partitions retried at once. Events held back
    (holding.py) are dropped too: the partitions' positions go back to the committed
    offsets, which precede them. Offsets of projected batches not yet committed are
    committed first (this projector still owns them)."""

    def __init__(
        self,
        projector: Projector,
        holder: HeldEvents,
        retries: ParkedRetries,
        health: Health,
        offsets: PendingOffsets,
    ) -> None:
        self._projector = projector
        self._holder = holder
        self._retries = retries
        self._health = health
        self._offsets = offsets

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._offsets.revoke(revoked)
        self._projector.forget()
        self._holder.forget()
        self._retries.owned -= {tp.partition for tp in revoked}

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._projector.forget()
        self._holder.forget()
        self._retries.owned |= {tp.partition for tp in assigned}
        self._retries.wake_all()
        self._health.assigned()


class HeldFlusher:
    """Projects batches through the holder (services/projector/holding.py) and commits
    their offsets (at most every `projector_commit_every_ms`: each commit writes one
    `__consumer_offsets` record per partition it names, and costs the broker a request);
    in the background, projects what was held once its time is up and no batch came to
    release it, and commits what the last batches before a quiet spell left pending.
    Callers hold `lock` (one writer per document)."""

    def __init__(
        self,
        projector: Projector,
        holder: HeldEvents,
        lock: asyncio.Lock,
        topic: str,
        offsets: PendingOffsets | None = None,
    ):
        self._projector = projector
        self.holder = holder
        self._lock = lock
        self._topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self.offsets = offsets if offsets is not None else PendingOffsets(None, 0)

    async def project(
        self,
        consumer: AIOKafkaConsumer,
        batch: list[Consumed],
        may_hold: bool,
        generation: int | None = None,
    ) -> bool:
        """Project `batch` and what it releases, then commit offsets up to what is held.

        `generation` is the holder's when the batch was fetched. If partitions moved since
        (a rebalance dropped what was held), the batch is not projected and nothing is
        committed: a plan made now would commit past the dropped events, which come before
        the batch. The rebalance put every partition back at its committed offset, so the
        batch is read again, by this projector or the partition's new owner. Returns
        whether the batch was projected."""
        if generation is not None and generation != self.holder.generation:
            log.info("dropping a batch fetched before partitions moved; it is read again")
            return False
        self._consumer = consumer
        plan = self.holder.plan(batch, time.monotonic(), may_hold)
        await self._projector.apply(plan.project, plan.partitions)
        if plan.project:
            PROJECTOR_LAST_SEQ.set(max(e.seq for e in plan.project))
        if plan.offsets:
            # (Offsets never go back: a held event's offset is at or past the last one
            # handed over, so the largest pending one never passes a held event.)
            self.offsets.consumer = consumer
            self.offsets.add({TopicPartition(self._topic, p): o for p, o in plan.offsets.items()})
        if self.offsets.consumer is not None:
            await self.offsets.commit_if_due()
        self.holder.adopt(plan)
        return True

    async def run(self, commit_every: float = 1.0) -> None:
        linger = self.holder.linger
        # Wakes for whichever comes first: held events' time, or a pending commit's.
        every = max(min(linger / 4, commit_every) if linger > 0 else commit_every, 0.05)
        while True:
            await asyncio.sleep(every)
            if self.offsets.consumer is not None:
                await self.offsets.commit_if_due()
            oldest = self.holder.oldest()
            if linger <= 0 or oldest is None or time.monotonic() - oldest < linger:
                continue
            consumer = self._consumer
            if consumer is None:
                continue
            try:
                async with self._lock:
                    # (A commit that races a rebalance fails, and the partitions' new
                    # owner starts from the offsets committed before: harmless.)
                    await self.project(consumer, [], may_hold=True)
            except Exception:
                log.warning("projecting held events failed; trying again", exc_info=True)
                self._projector.forget()


class ParkedRetries:
    """Retries parked executions of the partitions this projector owns: those due, every
    `check_seconds`; all of them when partitions are assigned (a start, a rebalance)."""

    def __init__(self, projector: Projector, lock: asyncio.Lock, check_seconds: float) -> None:
        self._projector = projector
        self._lock = lock  # held by the batch handler too: one writer per document
        self._check_seconds = check_seconds
        self.owned: set[int] = set()
        self._all = asyncio.Event()

    def wake_all(self) -> None:
        self._all.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all.wait(), self._check_seconds)
            everything = self._all.is_set()
            self._all.clear()
            try:
                await self.check(everything)
            except Exception:
                log.warning("retrying parked executions failed; trying again later", exc_info=True)

    async def check(self, everything: bool = False) -> int:
        """Retry what is due (or everything parked in owned partitions); returns how many
        were unparked."""
        parking = self._projector.parking
        assert parking is not None
        async with self._lock:
            entries = await parking.load()
            if not entries:
                return 0
            chosen: Collection[str] = (
                [
                    x
                    for x, d in entries.items()
                    if d.get("partition") is None or d["partition"] in self.owned
                ]
                if everything
                else parking.due(self.owned)
            )
            unparked = 0
            for execution_id in chosen:
                unparked += await self._projector.retry_parked(execution_id)
            log.warning("%d executions parked", len(parking.entries))
            return unparked


def build_app(settings: ProjectorSettings) -> FastStream:
    broker = kafka_broker(settings, client_id="runstore-projector")
    client = mongo_client(settings)
    db = mongo_database(client, settings)
    models = read_models_database(client, settings)
    store = MongoReadModelStore(models)
    parking = ParkedExecutions(models)
    health = Health(settings, client)
    store_latency = STORE_LATENCY.labels("projector")
    projector = Projector(
        store,
        MongoCommitLog(db),
        memory_bytes=settings.projector_memory_mb << 20,
        parking=parking,
        history_heads=settings.projector_history_heads,
    )
    lock = asyncio.Lock()
    retries = ParkedRetries(projector, lock, settings.projector_parked_check_seconds)
    holder = HeldEvents(settings.projector_hold_ms / 1000, settings.projector_hold_max_events)
    offsets = PendingOffsets(None, settings.projector_commit_every_ms / 1000)
    flusher = HeldFlusher(projector, holder, lock, settings.topics.events, offsets)
    listener = _ForgetOnRebalance(projector, holder, retries, health, offsets)
    background: list[asyncio.Task[None]] = []

    # MANUAL acks: offsets move only after the batch's documents are written; a failed
    # batch is sought back and applied again (the seq guards make that harmless).
    @batch_subscriber(
        broker,
        settings.topics.events,
        group_id=settings.group(settings.projector_group_id),
        max_records=settings.projector_max_batch,
        fetch_max_wait_ms=settings.projector_fetch_wait_ms,
        fetch_min_bytes=settings.projector_fetch_min_bytes,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        listener=listener,
        decoder=message_as_body,
    )
    async def handle_events(body: Any) -> None:
        message: KafkaMessage = body  # the batch's message itself (message_as_body)
        # Partitions moving from here on (the lock may be held by the flusher or parked
        # retries) make this batch stale: see HeldFlusher.project.
        generation = holder.generation
        consumed: list[Consumed] = []
        records = batch_records(message)
        PROJECTOR_LAG.set(observe_consumed(settings.projector_group_id, message.consumer, records))
        for record in records:
            try:
                event: Event | None = EVENT_ADAPTER.validate_json(record.value)
            except ValidationError as exc:
                # Only the engine writes this topic; an unreadable record is a bug to
                # report, not a reason to stop projecting everyone else's runs. (If a
                # later event of its execution arrives, the gap is filled from commits.)
                log.error(
                    "skipping unreadable event at %s/%s: %s", record.partition, record.offset, exc
                )
                event = None
            consumed.append(Consumed(event, record.partition, record.offset))
        consumer = message.consumer if isinstance(message.consumer, AIOKafkaConsumer) else None
        # (None: FastStream's test broker, which has no offsets to hold back.)
        try:
            async with lock:
                # A span per commit that carries a trace (none when tracing is off).
                with (
                    tracing.consumed_spans("project events", settings.topics.events, records),
                    store_latency.time(),
                ):
                    if consumer is None:
                        events = [c.event for c in consumed if c.event is not None]
                        where = {c.event.execution_id: c.partition for c in consumed if c.event}
                        await projector.apply(events, where)
                        if events:
                            PROJECTOR_LAST_SEQ.set(max(e.seq for e in events))
                    else:
                        # A full batch means the projection is behind: hold nothing back.
                        full = len(records) >= settings.projector_max_batch
                        await flusher.project(
                            consumer, consumed, may_hold=not full, generation=generation
                        )
        except Exception as exc:
            # Parking took care of everything but unavailable servers (and bugs that
            # fail every execution): retry the batch. (What was held stays held.)
            if is_transient(exc):
                log.warning("projecting %d records failed (%r); retrying", len(records), exc)
            else:
                log.exception("projecting %d records failed; retrying", len(records))
            projector.forget()  # which of its writes happened is unknown
            if holder.generation == generation:
                await seek_back(message)
            # else partitions moved meanwhile and are back at their committed offsets, which
            # may precede this batch (held events the rebalance dropped): seeking to the
            # batch's start would skip those.
            return
        if consumer is None:
            await ack_batch(message)
        else:
            message.committed = AckStatus.ACKED  # committed by the flusher, past what it holds

    async def setup() -> None:
        await ensure_read_models_in_place(client, settings)
        await store.setup()
        entries = await parking.load()
        if entries:
            log.warning("%d executions parked; retried once partitions are assigned", len(entries))
        background.append(asyncio.create_task(retries.run(), name="parked-retries"))
        background.append(
            asyncio.create_task(
                flusher.run(settings.projector_commit_every_ms / 1000), name="held-events"
            )
        )

    async def stop_background() -> None:
        for task in background:
            task.cancel()
        if offsets.consumer is not None:
            async with lock:  # (a batch in progress hands over its offsets first)
                await offsets.commit()  # a failure is logged: the events come again

    return service_app(
        broker,
        settings,
        client,
        setup,
        before_shutdown=stop_background,
        health=health,
        health_port=settings.projector_health_port,
    )
