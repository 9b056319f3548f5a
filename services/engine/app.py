"""Engine wiring: Kafka batch in, MongoDB commits, Kafka events/tasks/outcomes out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel

from schemas.commands import COMMAND_ADAPTER
from services.common import tracing
from services.common.batch_subscriber import batch_subscriber, message_as_body
from services.common.clock import now_ns
from services.common.health import Health
from services.common.kafka_io import Outgoing, RecordPublisher, batch_records, kafka_broker
from services.common.metrics import count_dead_letters, count_outcomes, observe_consumed
from services.common.mongo import mongo_client, mongo_database
from services.common.runtime import BatchCollector
from services.common.settings import EngineSettings, Topics
from services.common.stream_service import RETRY_BACKOFF_SECONDS, service_app
from services.engine.batch_timings import BatchTimings
from services.engine.command_spans import CommandSpans, TracedBatch
from services.engine.dead_letters import DeadLetterRecords, dead_letter_record
from services.engine.mongo_event_store import MongoEventStore
from services.engine.offsets import Consumer
from services.engine.outbound import Outbound
from services.engine.pipeline import Batch, EnginePipeline, Phase
from services.engine.processor import CommandProcessor
from services.engine.replies import ReplySender, networks
from services.engine.state_cache import StateCache
from services.engine.validation import InboundRecord

log = logging.getLogger(__name__)


class _ForgetRevokedPartitions(ConsumerRebalanceListener):  # type: ignore[misc]
    """Drops cached states of partitions this instance lost, once the batches in flight
    are stored and published with their offsets committed.

    aiokafka calls this from its coordinator task, possibly while a batch is being
    decided, so the cache is only told here and forgets at the start of the next batch.
    """

    def __init__(self, cache: StateCache, pipeline: EnginePipeline, health: Health) -> None:
        self._cache = cache
        self._pipeline = pipeline
        self._health = health

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._cache.forget_partitions_later({tp.partition for tp in revoked})
        # Let the batches in flight commit their offsets before the partitions go.
        await self._pipeline.drain()
        self._pipeline.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._health.assigned()


def count_outbound(out: Outbound) -> Outbound:
    """Metrics of a decided batch: outcomes by type and code, dead letters by reason."""
    count_outcomes((o.command_type, o.code or "accepted") for o in out.outcomes)
    if out.dead_letters:
        count_dead_letters(d.reason for d in out.dead_letters)
    return out


def outgoing_records(
    out: Outbound,
    topics: Topics,
    dead_letters: Sequence[Outgoing] | None = None,
    traced: TracedBatch | None = None,
) -> Iterator[Outgoing]:
    """What a processed batch publishes, in an order that keeps each execution's order.
    `dead_letters`: the batch's DLQ records as `DeadLetterRecords` made them (oversized
    ones stored elsewhere); by default each dead letter whole. `traced` (tracing on):
    the trace headers of each command's records (its events, tasks, outcome and the
    commands it sends to other executions)."""
    if dead_letters is None:
        dead_letters = [dead_letter_record(d, topics) for d in out.dead_letters]
    yield from dead_letters
    by_command = traced.by_command if traced is not None else {}
    by_event = traced.by_event if traced is not None else {}
    # JSON the direct replies made already (the same bytes: `Outbound.encoded`).
    encoded = out.encoded
    for commit in out.commits:
        trace = by_command.get(commit.command_id)
        for event in commit.events:
            headers = {"event-type": event.type.value, "seq": str(event.seq)}
            yield Outgoing(
                topics.events,
                event.execution_id,
                (encoded.get(id(event)) if encoded else None) or _json(event),
                headers if trace is None else {**headers, **trace},
            )
    for task in out.tasks:
        yield Outgoing(
            topics.tasks,
            task.execution_id,
            _json(task),
            by_event.get((task.execution_id, task.seq)),
        )
    for command in out.follow_ups:
        yield Outgoing(
            topics.commands,
            command.execution_id,
            COMMAND_ADAPTER.dump_json(command),
            by_command.get(out.caused_by.get(command.command_id, "")),
        )
    for outcome in out.outcomes:
        yield Outgoing(
            topics.outcomes,
            outcome.execution_id,
            (encoded.get(id(outcome)) if encoded else None) or _json(outcome),
            by_command.get(outcome.command_id),
        )


def _json(model: BaseModel) -> bytes:
    """The model's JSON, as `model_dump_json().encode()` (or the event union's adapter)
    would make it, straight from its own serializer: ~1 µs less per record."""
    return model.__pydantic_serializer__.to_json(model)


def collect_after_failures(
    collector: BatchCollector, timings: Callable[[Batch, Phase], None] | None = None
) -> Callable[[Batch, Phase], None]:
    """The pipeline's observer: a failed batch may be held in a cycle by its exception
    and traceback, so the collector's next check collects. `timings` is told of every
    phase too (`BatchTimings`)."""

    def observe(batch: Batch, phase: Phase) -> None:
        if timings is not None:
            timings(batch, phase)
        if phase is Phase.FAILED:
            collector.batch_failed()

    return observe


async def _collect_periodically(collector: BatchCollector, every_s: float = 5.0) -> None:
    """Full collections when due, also while no batch comes (an idle or stalled engine)."""
    while True:
        await asyncio.sleep(every_s)
        collector.check()


def build_app(settings: EngineSettings) -> FastStream:
    broker: KafkaBroker = kafka_broker(settings, client_id="runstore-engine")
    client = mongo_client(settings)
    # Appends on the engine's own loop, as reads: a writer thread's loop bought no overlap
    # under the GIL and made steady-rate rounds wait for hand-overs (docs/engine-performance.md,
    # "Fifteenth session").
    store = MongoEventStore(
        mongo_database(client, settings),
        settings.engine_compact_commits,
        settings.engine_ordered_insert_probe,
    )
    health = Health(settings, client)
    cache = StateCache(settings.engine_cache_size)
    collector = BatchCollector(settings.engine_gc_full_every_s, cache_entries=cache.__len__)
    processor = CommandProcessor(store, cache, now_ns)
    publisher = RecordPublisher(settings, client_id="runstore-engine")
    topics = settings.topics
    dead_letters = DeadLetterRecords(mongo_database(client, settings), topics)

    spans = CommandSpans() if tracing.tracer() is not None else None

    async def publish(out: Outbound) -> None:
        dlq = await dead_letters.records(out.dead_letters) if out.dead_letters else []
        traced = spans.start(out) if spans is not None else None
        try:
            await publisher.publish_batches(
                outgoing_records(count_outbound(out), topics, dlq, traced)
            )
        except BaseException as exc:
            if traced is not None:
                tracing.end_all(traced.spans, exc)
            raise
        if traced is not None:
            tracing.end_all(traced.spans)

    # Outcomes straight to the API instances waiting for them (services/engine/replies.py).
    replies = ReplySender(
        networks(settings.engine_reply_networks),
        max_links=settings.engine_reply_max_connections,
        buffer_bytes=settings.engine_reply_buffer_bytes,
        idle_s=settings.engine_reply_idle_s,
    )
    pipeline = EnginePipeline(
        processor,
        publish,
        RETRY_BACKOFF_SECONDS,
        collect_after_failures(collector, BatchTimings()),
        commit_every_s=settings.engine_commit_every_ms / 1000,
        replier=replies if replies.enabled else None,
    )

    # MANUAL acks: a batch's offsets are committed (by the pipeline, with explicit
    # offsets) only after its commits are stored and everything they imply is
    # published; on failure the batch is sought back. See services/engine/pipeline.py.
    @batch_subscriber(
        broker,
        topics.commands,
        pace_each_fetch=settings.engine_fetch_pace_each,
        group_id=settings.group(settings.engine_group_id),
        max_records=settings.engine_max_batch,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        listener=_ForgetRevokedPartitions(cache, pipeline, health),
        group_instance_id=settings.engine_instance_id,
        session_timeout_ms=settings.engine_session_timeout_ms,
        heartbeat_interval_ms=min(3000, settings.engine_session_timeout_ms // 3),
        decoder=message_as_body,
        fetch_max_wait_ms=settings.engine_fetch_wait_ms,
        fetch_min_bytes=settings.engine_fetch_min_bytes,
        gather_above_per_s=settings.engine_fetch_gather_above_per_s,
    )
    async def handle_commands(body: Any) -> None:
        # The batch's message itself (message_as_body: no thread hop to resolve it).
        message = cast("KafkaMessage", body)
        collector.before_batch()
        raw = batch_records(message)
        records = [
            InboundRecord(
                partition=r.partition,
                offset=r.offset,
                key=r.key,
                value=r.value,
                headers=tuple((k, v) for k, v in (r.headers or ())),
            )
            for r in raw
        ]
        observe_consumed(settings.engine_group_id, message.consumer, raw)
        if spans is not None:
            spans.received(records)
        await pipeline.submit(cast("Consumer", message.consumer), raw, records)
        collector.after_batch()

    async def drain() -> None:
        # While the consumer is up (so the offsets can be committed), and again once the
        # subscriber has stopped (its last batch may have been submitted meanwhile).
        stored = await pipeline.drain()
        if not (stored and await pipeline.published()):
            log.warning("the last batch was not stored or published; it is consumed again")

    collecting: list[asyncio.Task[None]] = []

    async def close() -> None:
        for task in collecting:
            task.cancel()
        await drain()
        await replies.close()
        await publisher.stop()

    async def setup() -> None:
        await store.setup()
        await publisher.start()
        collector.start()
        collecting.append(asyncio.create_task(_collect_periodically(collector), name="gc"))

    return service_app(
        broker,
        settings,
        client,
        setup,
        before_shutdown=drain,
        after_shutdown=close,
        health=health,
        health_port=settings.engine_health_port,
    )
