"""The worker's coalesced offset commits (services/common/pending_offsets.py): what is
committed when, and what a failed commit keeps. The consumer is a recording fake (pure
logic); the crash path with a real broker is tests/integration/test_worker_crash.py."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from services.common.pending_offsets import PendingOffsets

P0 = TopicPartition("tasks", 0)
P1 = TopicPartition("tasks", 1)


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.fail = False
        self.assigned = {P0, P1}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail:
            raise RuntimeError("CommitFailedError")
        if not offsets.keys() <= self.assigned:  # as aiokafka's IllegalStateError
            raise RuntimeError("IllegalStateError: partitions not assigned")
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_batches_within_the_interval_are_committed_together_at_their_latest() -> None:
    consumer, clock = FakeConsumer(), Clock()
    offsets = PendingOffsets(consumer, 0.1, clock)
    offsets.add({P0: 5})
    await offsets.commit_if_due()
    clock.now += 0.05
    offsets.add({P0: 9, P1: 3})
    await offsets.commit_if_due()
    assert consumer.commits == []
    clock.now += 0.06
    offsets.add({P1: 4})
    await offsets.commit_if_due()
    assert consumer.commits == [{P0: 9, P1: 4}]
    assert offsets.pending == {}
    clock.now += 0.01
    offsets.add({P0: 10})
    await offsets.commit_if_due()
    assert consumer.commits == [{P0: 9, P1: 4}], "the interval starts again at each commit"


async def test_zero_commits_after_every_batch_and_commit_takes_what_is_pending() -> None:
    consumer = FakeConsumer()
    every_batch = PendingOffsets(consumer, 0.0, Clock())
    every_batch.add({P0: 1})
    await every_batch.commit_if_due()
    every_batch.add({P0: 2})
    await every_batch.commit_if_due()
    assert consumer.commits == [{P0: 1}, {P0: 2}]

    idle = FakeConsumer()
    coalesced = PendingOffsets(idle, 60.0, Clock())
    coalesced.add({P1: 7})
    assert await coalesced.commit()
    assert await coalesced.commit(), "nothing pending: nothing to send"
    assert idle.commits == [{P1: 7}]


async def test_a_failed_commit_keeps_the_offsets_of_partitions_still_assigned() -> None:
    consumer, clock = FakeConsumer(), Clock()
    offsets = PendingOffsets(consumer, 0.0, clock)
    consumer.fail = True
    consumer.assigned = {P0}  # P1 went to another worker meanwhile
    offsets.add({P0: 4, P1: 6})
    await offsets.commit_if_due()  # logs, never raises
    assert offsets.pending == {P0: 4}
    offsets.add({P0: 8})
    consumer.fail = False
    await offsets.commit_if_due()
    assert consumer.commits == [{P0: 8}]


async def test_revoked_partitions_are_committed_first_then_forgotten() -> None:
    consumer = FakeConsumer()
    offsets = PendingOffsets(consumer, 60.0, Clock())
    offsets.add({P0: 3, P1: 5})
    await offsets.revoke([P0, P1])
    assert consumer.commits == [{P0: 3, P1: 5}]
    consumer.fail = True
    offsets.add({P0: 4})
    await offsets.revoke([P0])
    assert offsets.pending == {}, "the new owner starts from the committed offsets"


async def test_a_partition_no_longer_assigned_does_not_cost_the_others_their_commit() -> None:
    consumer = FakeConsumer()
    offsets = PendingOffsets(consumer, 0.0, Clock())
    offsets.add({P0: 2, P1: 9})
    consumer.assigned = {P0}  # P1 moved to another worker after its batch was handled
    await offsets.commit_if_due()
    assert consumer.commits == [{P0: 2}]
    assert offsets.pending == {}


class GatedConsumer(FakeConsumer):
    """Holds each commit until released, then fails it or records it."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Future[bool]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        gate: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        if not await gate:
            raise RuntimeError("CommitFailedError")
        self.commits.append(dict(offsets))


async def test_a_slow_failed_commit_never_puts_back_an_offset_below_a_later_one() -> None:
    consumer = GatedConsumer()
    offsets = PendingOffsets(consumer, 0.0, Clock())
    offsets.add({P0: 100})
    first = asyncio.ensure_future(offsets.commit())
    await asyncio.sleep(0)
    offsets.add({P0: 200})
    second = asyncio.ensure_future(offsets.commit())
    await asyncio.sleep(0)
    assert len(consumer.gates) == 1, "the second commit waits for the first"
    consumer.gates[0].set_result(False)  # the first fails
    assert not await first
    await asyncio.sleep(0)
    consumer.gates[1].set_result(True)
    assert await second
    assert consumer.commits == [{P0: 200}]
    assert offsets.pending == {}, "nothing below the committed 200 is left to commit"


async def test_a_commit_cancelled_in_flight_leaves_its_offsets_pending() -> None:
    consumer = GatedConsumer()
    offsets = PendingOffsets(consumer, 0.0, Clock())
    offsets.add({P0: 7, P1: 3})
    loop_commit = asyncio.ensure_future(offsets.commit())
    await asyncio.sleep(0)
    loop_commit.cancel()  # a background loop stopped mid-commit
    with pytest.raises(asyncio.CancelledError):
        await loop_commit
    assert offsets.pending == {P0: 7, P1: 3}
    final = asyncio.ensure_future(offsets.commit())
    await asyncio.sleep(0)
    consumer.gates[-1].set_result(True)
    assert await final
    assert consumer.commits == [{P0: 7, P1: 3}]
