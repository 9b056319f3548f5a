"""Projector wiring: `workflows.events` in batches → runs, executions, history."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from faststream import AckPolicy, FastStream
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from schemas.events import EVENT_ADAPTER, Event
from services.common import tracing
from services.common.health import Health
from services.common.kafka_io import batch_records, kafka_broker
from services.common.metrics import (
    PROJECTOR_LAG,
    PROJECTOR_LAST_SEQ,
    STORE_LATENCY,
    observe_consumed,
)
from services.common.mongo import mongo_client, mongo_database
from services.common.mongo_commit_log import MongoCommitLog
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.settings import ProjectorSettings
from services.common.stream_service import seek_back, service_app
from services.projector.parking import ParkedExecutions, is_transient
from services.projector.projector import Projector

log = logging.getLogger(__name__)


class _ForgetOnRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """The documents a projector remembers are only as good as its being their single
    writer: once partitions move (either way), it reads them again. It also tracks the
    partitions owned (parked executions are retried only by their partition's owner) and
    has the parked ones of newly assigned partitions retried at once."""

    def __init__(self, projector: Projector, retries: ParkedRetries, health: Health) -> None:
        self._projector = projector
        self._retries = retries
        self._health = health

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._projector.forget()
        self._retries.owned -= {tp.partition for tp in revoked}

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._projector.forget()
        self._retries.owned |= {tp.partition for tp in assigned}
        self._retries.wake_all()
        self._health.assigned()


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


def _raw_records(message: KafkaMessage) -> object:
    """The handler parses the records itself: skip FastStream's decoding of each one (a
    visible share of the projector's CPU; docs/read-models.md, "Measurements")."""
    return message.raw_message


def build_app(settings: ProjectorSettings) -> FastStream:
    broker = kafka_broker(settings, client_id="runstore-projector")
    client = mongo_client(settings)
    db = mongo_database(client, settings)
    store = MongoReadModelStore(db)
    parking = ParkedExecutions(db)
    health = Health(settings, client)
    store_latency = STORE_LATENCY.labels("projector")
    projector = Projector(
        store,
        MongoCommitLog(db),
        memory_bytes=settings.projector_memory_mb << 20,
        parking=parking,
    )
    lock = asyncio.Lock()
    retries = ParkedRetries(projector, lock, settings.projector_parked_check_seconds)
    background: list[asyncio.Task[None]] = []

    # MANUAL acks: offsets move only after the batch's documents are written; a failed
    # batch is sought back and applied again (the seq guards make that harmless).
    @broker.subscriber(
        settings.topics.events,
        group_id=settings.group(settings.projector_group_id),
        batch=True,
        max_records=settings.projector_max_batch,
        batch_timeout_ms=50,
        fetch_max_wait_ms=settings.projector_fetch_wait_ms,
        fetch_min_bytes=settings.projector_fetch_min_bytes,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        listener=_ForgetOnRebalance(projector, retries, health),
        decoder=_raw_records,
    )
    async def handle_events(message: KafkaMessage) -> None:
        events: list[Event] = []
        partitions: dict[str, int] = {}
        records = batch_records(message)
        PROJECTOR_LAG.set(observe_consumed(settings.projector_group_id, message.consumer, records))
        for record in records:
            try:
                event = EVENT_ADAPTER.validate_json(record.value)
                events.append(event)
                partitions[event.execution_id] = record.partition
            except ValidationError as exc:
                # Only the engine writes this topic; an unreadable record is a bug to
                # report, not a reason to stop projecting everyone else's runs. (If a
                # later event of its execution arrives, the gap is filled from commits.)
                log.error(
                    "skipping unreadable event at %s/%s: %s", record.partition, record.offset, exc
                )
        try:
            async with lock:
                # A span per commit that carries a trace (none when tracing is off).
                with (
                    tracing.consumed_spans("project events", settings.topics.events, records),
                    store_latency.time(),
                ):
                    await projector.apply(events, partitions)
        except Exception as exc:
            # Parking took care of everything but unavailable servers (and bugs that
            # fail every execution): retry the batch.
            if is_transient(exc):
                log.warning("projecting %d events failed (%r); retrying", len(events), exc)
            else:
                log.exception("projecting %d events failed; retrying", len(events))
            projector.forget()  # which of its writes happened is unknown
            await seek_back(message)
            return
        if events:
            PROJECTOR_LAST_SEQ.set(max(e.seq for e in events))
        await message.ack()

    async def setup() -> None:
        await store.setup()
        entries = await parking.load()
        if entries:
            log.warning("%d executions parked; retried once partitions are assigned", len(entries))
        background.append(asyncio.create_task(retries.run(), name="parked-retries"))

    async def stop_background() -> None:
        for task in background:
            task.cancel()

    return service_app(
        broker,
        settings,
        client,
        setup,
        before_shutdown=stop_background,
        health=health,
        health_port=settings.projector_health_port,
    )
