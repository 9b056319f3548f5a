"""Publishing one batch while the next is decided, with offsets committed in order.

The engine's steps for a batch are: decide and append (MongoDB), publish what the
commits imply (Kafka), commit the offsets. Publishing waits for acknowledgements, so
done strictly in turn the two servers take turns at being idle. The pipeline lets the
append of batch N+1 run while batch N's records are being acknowledged:

- at most one batch is being published; N+1's publishing starts only after N's has
  finished, so the records of one key keep their order across batches;
- N's offsets are committed only after everything it implies is acknowledged;
- if N's publishing fails, N+1 is stored but not published either: both are sought
  back, and their redelivery re-publishes the stored commits without deciding again
  (the processor recognises a record by its source offset).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiokafka import TopicPartition

log = logging.getLogger(__name__)


class Consumer(Protocol):
    """What the pipeline needs of `AIOKafkaConsumer`."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...


class Position(Protocol):
    """A consumed record's place (an aiokafka `ConsumerRecord` is one)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


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


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[None]
    first: dict[TopicPartition, int]


class PublishPipeline:
    def __init__(self) -> None:
        self._in_flight: _InFlight | None = None

    async def settle(self) -> dict[TopicPartition, int]:
        """Wait for the batch being published. Returns where to seek back to if its
        publishing failed (empty when it succeeded or nothing was in flight)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return {}
        try:
            await in_flight.task
        except Exception:
            log.exception("publishing a batch failed; it will be consumed again")
            return in_flight.first
        return {}

    def start(
        self,
        consumer: Consumer,
        batch: Iterable[Position],
        publish: Callable[[], Awaitable[None]],
    ) -> None:
        """Publish a decided and stored batch in the background, then commit its offsets.
        Call only after `settle`."""
        if self._in_flight is not None:
            raise RuntimeError("a batch is still being published; settle it first")
        positions = list(batch)
        offsets = following(positions)

        async def publish_then_commit() -> None:
            await publish()
            try:
                await consumer.commit(offsets)
            except Exception:
                # Typically the partitions were revoked meanwhile: their new owner starts
                # from the last committed offsets and re-publishes from the store.
                log.warning("could not commit offsets %s", offsets, exc_info=True)

        self._in_flight = _InFlight(asyncio.create_task(publish_then_commit()), earliest(positions))

    async def drain(self) -> None:
        """Wait until nothing is being published (before a rebalance or a shutdown); the
        outcome is still reported by the next `settle`."""
        if self._in_flight is not None:
            await asyncio.wait({self._in_flight.task})

    @staticmethod
    def rewind(consumer: Consumer, *starts: Mapping[TopicPartition, int]) -> None:
        """Seek each partition back to the earliest of the given positions."""
        merged: dict[TopicPartition, int] = {}
        for start in starts:
            for tp, offset in start.items():
                merged[tp] = min(merged.get(tp, offset), offset)
        for tp, offset in merged.items():
            try:
                consumer.seek(tp, offset)
            except Exception:
                # Revoked meanwhile: the new owner starts from the committed offset.
                log.warning("could not seek %s back to %d", tp, offset, exc_info=True)
