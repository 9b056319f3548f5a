"""What every Kafka-consuming service shares: its app lifecycle and how it retries a batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from faststream.message import AckStatus
from pymongo import AsyncMongoClient

from services.common.health import Health, serve_health
from services.common.kafka_io import batch_records
from services.common.kafka_topics import ensure_topics
from services.common.settings import RunstoreSettings

log = logging.getLogger(__name__)

# After a failure (store or broker unreachable) a batch is sought back and consumed again;
# waiting a little keeps a dead dependency from turning into a busy loop.
RETRY_BACKOFF_SECONDS = 1.0


async def raw_records(message: KafkaMessage) -> object:
    """A batch subscriber's decoder for handlers that read the raw records themselves:
    skips FastStream's decoding of each one (a header dict and a body decode per record;
    docs/engine-performance.md).

    A coroutine on purpose: FastStream runs a plain function decoder in a worker thread
    (anyio's `to_thread`), a hop there and back per batch that cost the engine ~7% of
    its CPU at a worker's few commands per batch."""
    return message.raw_message


def service_app(
    broker: KafkaBroker,
    settings: RunstoreSettings,
    client: AsyncMongoClient[dict[str, Any]],
    setup: Callable[[], Awaitable[None]],
    before_shutdown: Callable[[], Awaitable[None]] | None = None,
    after_shutdown: Callable[[], Awaitable[None]] | None = None,
    health: Health | None = None,
    health_port: int | None = None,
) -> FastStream:
    """A FastStream app that creates the topics and runs `setup` before consuming, runs
    `before_shutdown` while the broker is still up and `after_shutdown` once it is down,
    then closes the MongoDB client. With `health` and a port, it serves /healthz, /readyz
    and /metrics there (services/common/health.py)."""
    app = FastStream(broker)
    probes: list[asyncio.Server] = []
    if before_shutdown is not None:
        app.on_shutdown(before_shutdown)
    if after_shutdown is not None:
        app.after_shutdown(after_shutdown)

    @app.on_startup
    async def prepare() -> None:
        if health is not None:
            server = await serve_health(health, settings.health_host, health_port)
            if server is not None:
                probes.append(server)
        await ensure_topics(settings)
        await setup()

    @app.after_shutdown
    async def close() -> None:
        for server in probes:
            server.close()
        if health is not None:
            await health.close()
        await client.close()

    return app


async def ack_batch(message: KafkaMessage) -> None:
    """Commit the offsets after a batch's records, for the partitions the batch read.

    `message.ack()` commits every assigned partition, one offset record each (12 with the
    default partitions), most of them unchanged: at a few records a batch that is most of
    the offsets topic's traffic. Raises as the commit does (revoked partitions: their new
    owner starts from the last committed offsets)."""
    consumer = message.consumer
    if not isinstance(consumer, AIOKafkaConsumer):  # FastStream's test broker
        await message.ack()
        return
    offsets: dict[TopicPartition, int] = {}
    for record in batch_records(message):
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    if offsets:
        await consumer.commit(offsets)
    message.committed = AckStatus.ACKED  # what ack() would set, without its own commit


async def seek_back(message: KafkaMessage) -> None:
    """Have a failed batch consumed again after a pause (its offsets were not committed)."""
    try:
        await message.nack()
    except Exception:
        # Partitions revoked meanwhile: their new owner starts from the committed offset.
        log.warning("could not seek back after a failed batch", exc_info=True)
    await asyncio.sleep(RETRY_BACKOFF_SECONDS)
