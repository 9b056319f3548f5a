"""Offset bookkeeping and the ordered publish stage: offsets committed after publishing,
one batch published at a time, failures seek back."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition

from services.engine.offsets import commit_offsets, earliest, following, seek_back
from services.engine.publish_stage import PublishStage
from tests.support.engine import FakeConsumer


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int


T0, T1 = TopicPartition("c", 0), TopicPartition("c", 1)
BATCH_1 = [Rec("c", 0, 10), Rec("c", 1, 5), Rec("c", 0, 11)]
BATCH_2 = [Rec("c", 0, 12), Rec("c", 1, 6)]


def test_positions_of_a_batch() -> None:
    assert earliest(BATCH_1) == {T0: 10, T1: 5}
    assert following(BATCH_1) == {T0: 12, T1: 6}


async def _publish_then_commit(
    consumer: FakeConsumer, batch: list[Rec], gate: asyncio.Event | None = None
) -> None:
    if gate is not None:
        await gate.wait()
    await commit_offsets(consumer, following(batch))


async def test_offsets_are_committed_only_after_the_batch_is_published() -> None:
    consumer, stage = FakeConsumer(), PublishStage()
    release = asyncio.Event()
    stage.start(earliest(BATCH_1), _publish_then_commit(consumer, BATCH_1, release))
    await asyncio.sleep(0)
    assert consumer.commits == []  # still publishing
    assert not stage.known_failed()  # in flight: not known to fail
    release.set()
    assert await stage.result() == {}
    assert consumer.commits == [{T0: 12, T1: 6}]
    assert not stage.known_failed()


async def test_a_batch_is_published_only_after_the_previous_ones_result_was_taken() -> None:
    consumer, stage = FakeConsumer(), PublishStage()
    first = _publish_then_commit(consumer, BATCH_1)
    stage.start(earliest(BATCH_1), first)
    second = _publish_then_commit(consumer, BATCH_2)
    with pytest.raises(RuntimeError, match="take its result first"):
        stage.start(earliest(BATCH_2), second)
    await stage.result()
    stage.start(earliest(BATCH_2), second)
    await stage.result()
    assert consumer.commits == [{T0: 12, T1: 6}, {T0: 13, T1: 7}]


async def test_a_failed_publish_commits_nothing_and_both_batches_are_sought_back() -> None:
    consumer, stage = FakeConsumer(), PublishStage()

    async def broken() -> None:
        raise ConnectionError("broker gone")

    stage.start(earliest(BATCH_1), broken())
    await stage.wait()
    assert stage.known_failed()
    failed = await stage.result()
    assert failed == {T0: 10, T1: 5}
    assert consumer.commits == []
    # The next batch (stored meanwhile) goes back too: each partition to its earliest.
    seek_back(consumer, failed, earliest(BATCH_2))
    assert sorted(consumer.seeks) == [(T0, 10), (T1, 5)]


async def test_wait_leaves_the_result_to_be_taken() -> None:
    consumer, stage = FakeConsumer(), PublishStage()
    release = asyncio.Event()
    stage.start(earliest(BATCH_2), _publish_then_commit(consumer, BATCH_2, release))
    waiting = asyncio.create_task(stage.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    release.set()
    await waiting
    assert consumer.commits == [{T0: 13, T1: 7}]
    assert stage.in_flight is not None  # its result is still to be taken
    assert await stage.result() == {}
    assert stage.in_flight is None
    await stage.wait()  # nothing in flight: returns at once


async def test_a_refused_offset_commit_is_reported_not_raised() -> None:
    class Revoked(FakeConsumer):
        async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
            raise RuntimeError("partitions revoked")

    assert await commit_offsets(Revoked(), {T0: 1}) is False
    assert await commit_offsets(FakeConsumer(), {T0: 1}) is True
