"""Offset bookkeeping for consumed batches: what to commit, where to seek back to."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

from aiokafka import TopicPartition

from services.common.kafka_io import Position

log = logging.getLogger(__name__)


class Consumer(Protocol):
    """What the engine needs of `AIOKafkaConsumer`."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...


def earliest(records: Iterable[Position]) -> dict[TopicPartition, int]:
    """Per partition, the first offset of a batch: where to seek to consume it again."""
    first: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    return first


def following(records: Iterable[Position]) -> dict[TopicPartition, int]:
    """Per partition, the offset after a batch's last record: what to commit."""
    after: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        after[tp] = max(after.get(tp, 0), r.offset + 1)
    return after


def earliest_of(*starts: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Per partition, the earliest of the given positions."""
    merged: dict[TopicPartition, int] = {}
    for start in starts:
        for tp, offset in start.items():
            merged[tp] = min(merged.get(tp, offset), offset)
    return merged


def seek_back(consumer: Consumer, *starts: Mapping[TopicPartition, int]) -> None:
    """Seek each partition back to the earliest of the given positions."""
    for tp, offset in earliest_of(*starts).items():
        try:
            consumer.seek(tp, offset)
        except Exception:
            # Revoked meanwhile: the new owner starts from the committed offset.
            log.warning("could not seek %s back to %d", tp, offset, exc_info=True)


async def commit_offsets(consumer: Consumer, offsets: Mapping[TopicPartition, int]) -> bool:
    """Commit `offsets`; False if the consumer refused (typically the partitions were
    revoked meanwhile: their new owner starts from the last committed offsets and
    re-publishes from the store)."""
    try:
        await consumer.commit(offsets)
    except Exception:
        log.warning("could not commit offsets %s", offsets, exc_info=True)
        return False
    return True
