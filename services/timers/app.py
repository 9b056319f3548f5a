"""Timers wiring: `workflows.events` (consumer group `timers`) → durable timers → commands
on `workflows.commands`; schedules → StartWorkflow commands."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import suppress
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from faststream import AckPolicy, FastStream
from faststream.kafka.message import KafkaMessage
from faststream.message import AckStatus
from pydantic import ValidationError

from schemas.events import EVENT_ADAPTER, Event
from services.common.batch_subscriber import batch_subscriber, message_as_body
from services.common.clock import now_ns, utcnow
from services.common.health import Health
from services.common.kafka_io import RecordPublisher, batch_records, kafka_broker
from services.common.kafka_topics import partitions_of
from services.common.metrics import TIMERS_PENDING, observe_consumed
from services.common.mongo import (
    ensure_read_models_in_place,
    mongo_client,
    mongo_database,
    read_models_database,
)
from services.common.pending_offsets import PendingOffsets
from services.common.readmodels.mongo_reader import MongoReadModelReader
from services.common.schedule_store import MongoScheduleStore
from services.common.settings import TimersSettings
from services.common.stream_service import ack_batch, seek_back, service_app
from services.timers.event_filter import may_change_timers
from services.timers.firing import TimerService
from services.timers.schedule_runner import ScheduleRunner
from services.timers.timer_store import MongoTimerStore

log = logging.getLogger(__name__)

STATS_COLLECTION = "timer_stats"


class _FollowPartitions(ConsumerRebalanceListener):  # type: ignore[misc]
    """Timers are partitioned like the events: owning an events partition = owning its
    timers and schedules. Loaded on assignment, before any of its events is consumed. The
    offsets of applied batches are committed before partitions move."""

    def __init__(
        self,
        service: TimerService,
        runner: ScheduleRunner,
        topic: str,
        health: Health,
        offsets: PendingOffsets,
    ) -> None:
        self._service = service
        self._runner = runner
        self._topic = topic
        self._health = health
        self._offsets = offsets

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._offsets.revoke(revoked)
        # Forgotten even when the next assignment gives them back: after a lost session
        # another instance may have owned them meanwhile (fired, stored and committed), and
        # only the store knows. aiokafka rebalances eagerly, so a rebalance reloads all.
        mine = [tp.partition for tp in revoked if tp.topic == self._topic]
        self._service.revoke(mine)
        self._runner.owned = self._service.pending.partitions

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._service.assign(tp.partition for tp in assigned if tp.topic == self._topic)
        self._runner.owned = self._service.pending.partitions
        self._health.assigned()


def build_app(settings: TimersSettings) -> FastStream:
    broker = kafka_broker(settings, client_id="runstore-timers")
    client = mongo_client(settings)
    db = mongo_database(client, settings)
    models = read_models_database(client, settings)
    publisher = RecordPublisher(settings, client_id="runstore-timers-fire")
    store = MongoTimerStore(db)
    service = TimerService(
        store,
        publisher,
        settings.topics.commands,
        tick_seconds=settings.timers_tick_seconds,
        fire_batch=settings.timers_fire_batch,
    )
    runner = ScheduleRunner(
        MongoScheduleStore(db), MongoReadModelReader(models), publisher, settings, service.stats
    )
    instance = f"{socket.gethostname()}:{os.getpid()}"
    health = Health(settings, client)
    # Read at scrape time: nothing to do on the firing path.
    TIMERS_PENDING.set_function(lambda: len(service.pending))
    tasks: list[asyncio.Task[Any]] = []
    # Coalesced commits: one per `timers_commit_every_ms`, not one per fetch (each names
    # every partition the batch read: one `__consumer_offsets` record each).
    offsets = PendingOffsets(None, settings.timers_commit_every_ms / 1000)
    listener = _FollowPartitions(service, runner, settings.topics.events, health, offsets)

    # MANUAL acks: a batch's offsets are committed only after the timers it implies are
    # stored (at most every `timers_commit_every_ms`); a failed batch is sought back and
    # applied again (idempotent upserts).
    @batch_subscriber(
        broker,
        settings.topics.events,
        group_id=settings.group(settings.timers_group_id),
        max_records=settings.timers_max_batch,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        listener=listener,
        group_instance_id=settings.timers_instance_id,
        session_timeout_ms=settings.timers_session_timeout_ms,
        heartbeat_interval_ms=min(3000, settings.timers_session_timeout_ms // 3),
        fetch_max_wait_ms=settings.timers_fetch_wait_ms,
        fetch_min_bytes=settings.timers_fetch_min_bytes,
        decoder=message_as_body,
    )
    async def handle_events(body: Any) -> None:
        message: KafkaMessage = body  # the batch's message itself (message_as_body)
        events: list[tuple[int, Event]] = []
        records = batch_records(message)
        observe_consumed(settings.timers_group_id, message.consumer, records)
        for record in records:
            if not may_change_timers(record.headers):
                continue  # no timer depends on this event's type: not decoded
            try:
                events.append((record.partition, EVENT_ADAPTER.validate_json(record.value)))
            except ValidationError as exc:
                # Only the engine writes this topic: report, never block the partition.
                log.error(
                    "skipping unreadable event at %s/%s: %s", record.partition, record.offset, exc
                )
        try:
            await service.apply(events)
        except Exception:
            log.exception("storing the timers of %d events failed; retrying", len(events))
            await seek_back(message)
            return
        consumer = message.consumer
        if not isinstance(consumer, AIOKafkaConsumer):  # FastStream's test broker
            await ack_batch(message)
            return
        offsets.consumer = consumer
        ends: dict[TopicPartition, int] = {}
        for record in records:
            ends[TopicPartition(record.topic, record.partition)] = record.offset + 1
        offsets.add(ends)
        await offsets.commit_if_due()
        message.committed = AckStatus.ACKED  # committed by `offsets`, now or soon

    async def commit_when_quiet() -> None:
        # A batch commits only when the last commit is old enough: what the last batches
        # before a quiet spell left pending is committed here.
        every = max(settings.timers_commit_every_ms / 1000, 0.05)
        while True:
            await asyncio.sleep(every)
            if offsets.consumer is not None:
                await offsets.commit_if_due()

    async def report_stats() -> None:
        stats_coll = db[STATS_COLLECTION]
        while True:
            await asyncio.sleep(settings.timers_stats_seconds)
            summary = service.refresh_stats().summary(now_ns())
            log.info("timers: %s", " ".join(f"{k}={v}" for k, v in summary.items()))
            with suppress(Exception):
                await stats_coll.replace_one(
                    {"_id": instance},
                    {**summary, "instance": instance, "at": utcnow()},
                    upsert=True,
                )

    async def setup() -> None:
        await ensure_read_models_in_place(client, settings)
        await store.setup()
        await publisher.start()
        runner.partition_count = len(await partitions_of(settings, settings.topics.events))

    async def start_loops() -> None:
        tasks.append(asyncio.create_task(service.run_firing(), name="timers-firing"))
        tasks.append(asyncio.create_task(runner.run(), name="timers-schedules"))
        tasks.append(asyncio.create_task(report_stats(), name="timers-stats"))
        tasks.append(asyncio.create_task(commit_when_quiet(), name="timers-offsets"))

    async def stop_loops() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task
        if offsets.consumer is not None:
            await offsets.commit()  # (a failure is logged: the events are applied again)
        await publisher.stop()

    app = service_app(
        broker,
        settings,
        client,
        setup,
        before_shutdown=stop_loops,
        health=health,
        health_port=settings.timers_health_port,
    )
    app.after_startup(start_loops)
    return app
