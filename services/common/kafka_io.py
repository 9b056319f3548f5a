"""Kafka helpers every service uses: broker factory, raw batch access, pipelined publish."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage

from services.common.settings import RunstoreSettings


def kafka_broker(settings: RunstoreSettings, client_id: str) -> KafkaBroker:
    # Idempotent producer (acks=all): a retried send never duplicates or reorders
    # records within a partition, which per-execution ordering relies on.
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=256 * 1024,
        logger=None,
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
