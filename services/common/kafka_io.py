"""Kafka helpers every service uses: broker factory, raw batch access, pipelined publish."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage

from services.common.settings import RunstoreSettings

# Idempotent producers (acks=all): a retried send never duplicates or reorders records
# within a partition, which per-execution ordering relies on.
_PRODUCER_OPTIONS: dict[str, Any] = {
    "enable_idempotence": True,
    "linger_ms": 2,
    "max_batch_size": 256 * 1024,
}


def kafka_broker(settings: RunstoreSettings, client_id: str) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap, client_id=client_id, logger=None, **_PRODUCER_OPTIONS
    )


def batch_records(message: KafkaMessage) -> Sequence[ConsumerRecord[Any, Any]]:
    """The raw records behind a batch subscriber's message, in consumption order."""
    raw = message.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: str
    value: bytes
    headers: dict[str, str] | None = None


class RecordPublisher:
    """A plain aiokafka producer for a service's high-volume output.

    FastStream's `publish` wraps each record in a message object (ids, headers,
    middlewares), which costs about twice aiokafka's own CPU per record (measured: 44 vs
    22 µs); the engine sends three records per command, so it publishes through this.
    Partitioning is aiokafka's default (murmur2 of the key), the same FastStream uses.
    """

    def __init__(self, settings: RunstoreSettings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        # Created here: aiokafka binds a producer to the running event loop.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            client_id=self._client_id,
            **_PRODUCER_OPTIONS,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def publish_all(self, records: Iterable[Outgoing]) -> None:
        """Send every record without waiting for each, then wait for all acknowledgements.

        Sends are issued in order, so records with one key keep their order in the
        partition.
        """
        if self._producer is None:
            raise RuntimeError("RecordPublisher.start() was not called")
        send = self._producer.send
        futures = [
            await send(
                r.topic,
                r.value,
                key=r.key.encode(),
                headers=[(k, v.encode()) for k, v in r.headers.items()] if r.headers else None,
            )
            for r in records
        ]
        if futures:
            await asyncio.gather(*futures)


async def publish_all(broker: KafkaBroker, records: Iterable[Outgoing]) -> None:
    """Send every record without waiting for each, then wait for all acknowledgements.

    Sends are issued in order, so records with one key keep their order in the partition.
    """
    futures: list[asyncio.Future[Any]] = []
    for r in records:
        future = await broker.publish(
            r.value,
            topic=r.topic,
            key=r.key.encode(),
            headers=r.headers or {},
            no_confirm=True,
        )
        futures.append(future)
    if futures:
        await asyncio.gather(*futures)
