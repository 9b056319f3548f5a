"""The engine's publish pipeline: offsets committed after publishing, in order; failures rewind."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition

from services.engine.pipeline import PublishPipeline, earliest, following


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


T0, T1 = TopicPartition("c", 0), TopicPartition("c", 1)
BATCH_1 = [Rec("c", 0, 10), Rec("c", 1, 5), Rec("c", 0, 11)]
BATCH_2 = [Rec("c", 0, 12), Rec("c", 1, 6)]


def test_positions_of_a_batch() -> None:
    assert earliest(BATCH_1) == {T0: 10, T1: 5}
    assert following(BATCH_1) == {T0: 12, T1: 6}


async def test_offsets_are_committed_only_after_the_batch_is_published() -> None:
    consumer, pipeline = FakeConsumer(), PublishPipeline()
    release = asyncio.Event()

    async def publish() -> None:
        await release.wait()

    pipeline.start(consumer, BATCH_1, publish)
    await asyncio.sleep(0.01)
    assert consumer.commits == []  # still publishing
    release.set()
    assert await pipeline.settle() == {}
    assert consumer.commits == [{T0: 12, T1: 6}]


async def test_a_batch_is_published_only_after_the_previous_one_settled() -> None:
    consumer, pipeline = FakeConsumer(), PublishPipeline()
    order: list[str] = []

    async def publish(name: str) -> None:
        order.append(f"{name} start")
        await asyncio.sleep(0.01)
        order.append(f"{name} end")

    pipeline.start(consumer, BATCH_1, lambda: publish("n"))
    with pytest.raises(RuntimeError, match="settle it first"):
        pipeline.start(consumer, BATCH_2, lambda: publish("n+1"))
    await pipeline.settle()
    pipeline.start(consumer, BATCH_2, lambda: publish("n+1"))
    await pipeline.settle()
    assert order == ["n start", "n end", "n+1 start", "n+1 end"]
    assert consumer.commits == [{T0: 12, T1: 6}, {T0: 13, T1: 7}]


async def test_a_failed_publish_commits_nothing_and_both_batches_are_sought_back() -> None:
    consumer, pipeline = FakeConsumer(), PublishPipeline()

    async def broken() -> None:
        raise ConnectionError("broker gone")

    pipeline.start(consumer, BATCH_1, broken)
    failed = await pipeline.settle()
    assert failed == {T0: 10, T1: 5}
    assert consumer.commits == []
    # The next batch (stored meanwhile) goes back too: each partition to its earliest.
    PublishPipeline.rewind(consumer, failed, earliest(BATCH_2))
    assert sorted(consumer.seeks) == [(T0, 10), (T1, 5)]


async def test_drain_waits_for_the_publish_and_settle_still_reports_it() -> None:
    consumer, pipeline = FakeConsumer(), PublishPipeline()

    async def slow() -> None:
        await asyncio.sleep(0.02)

    pipeline.start(consumer, BATCH_2, slow)
    await pipeline.drain()
    assert consumer.commits == [{T0: 13, T1: 7}]
    assert await pipeline.settle() == {}
    await pipeline.drain()  # nothing in flight: returns at once
