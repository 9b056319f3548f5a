"""The projector's holding back of just-started executions (services/projector/holding.py):
what a batch projects and keeps, and the offsets it may commit.

The invariant that matters for crashes and rebalances: a committed offset never passes an
event that is not written yet (so a restart re-delivers everything held); and whatever
the batching, timing and holding, the documents end as one fold of every event.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from typing import Any

from aiokafka import TopicPartition

from schemas.events import Event
from services.common.pending_offsets import PendingOffsets
from services.projector.app import HeldFlusher
from services.projector.holding import Consumed, HeldEvents
from services.projector.projector import Projector
from tests.support.workloads import Workload, mixed_workload
from tests.unit.test_projector import CountingStore, expected

PARTITIONS = 3


def partition_of(e: Event) -> int:
    return zlib.crc32(e.execution_id.encode()) % PARTITIONS


def as_consumed(events: list[Event], offsets: dict[int, int]) -> list[Consumed]:
    """`events` as records of their partitions, at the next offsets."""
    out = []
    for e in events:
        p = partition_of(e)
        out.append(Consumed(e, p, offsets.get(p, 0)))
        offsets[p] = offsets.get(p, 0) + 1
    return out


async def test_a_workflow_completed_in_the_next_batch_is_written_by_inserts_only() -> None:
    w = Workload()
    first = w.start("a").events
    second = w.complete("a", result=1).events
    holder, store = HeldEvents(0.2, 100), CountingStore()
    projector, offsets = Projector(store), dict[int, int]()

    plan = holder.plan(as_consumed(first, offsets), now=0.0)
    assert plan.project == []  # started and still open: held
    assert plan.offsets == {partition_of(first[0]): 0}  # not committed past it
    await projector.apply(plan.project)
    holder.adopt(plan)
    assert len(holder) == len(first)

    plan = holder.plan(as_consumed(second, offsets), now=0.05)
    assert plan.project == first + second
    assert plan.offsets == {partition_of(first[0]): len(first) + len(second)}
    await projector.apply(plan.project)
    holder.adopt(plan)
    assert len(holder) == 0
    assert store.total(store.replaced) == 0
    assert store.total(store.reads) == 0
    assert store.data == expected(first + second)


async def test_held_events_are_released_when_their_time_is_up() -> None:
    w = Workload()
    first = w.start("a").events
    holder = HeldEvents(0.2, 100)
    plan = holder.plan(as_consumed(first, {}), now=1.0)
    holder.adopt(plan)
    assert holder.oldest() == 1.0
    assert holder.plan([], now=1.1).project == []
    plan = holder.plan([], now=1.25)
    assert plan.project == first
    assert plan.offsets == {partition_of(first[0]): len(first)}
    holder.adopt(plan)
    assert holder.oldest() is None


def test_nothing_is_held_when_the_batch_is_full_closed_or_holding_is_off() -> None:
    w = Workload()
    open_events = w.start("a").events
    w.start("b")
    closed = w.all_events()[len(open_events) :] + w.complete("b").events
    assert HeldEvents(0.2, 100).plan(as_consumed(open_events, {}), 0, may_hold=False).project
    assert HeldEvents(0.0, 100).plan(as_consumed(open_events, {}), 0).project == open_events
    assert HeldEvents(0.2, 100).plan(as_consumed(closed, {}), 0).project == closed
    # An execution not started in this batch is never held back.
    later = w.signal("a").events
    assert HeldEvents(0.2, 100).plan(as_consumed(later, {}), 0).project == later


def test_at_most_max_events_are_held() -> None:
    w = Workload()
    for i in range(10):
        w.start(f"x{i}")
    events = w.all_events()
    plan = HeldEvents(0.2, max_events=3 * len(w.start("y").events)).plan(as_consumed(events, {}), 0)
    assert len(plan.held) == 3
    assert len(plan.project) == len(events) - sum(len(h.events) for h in plan.held.values())


def test_a_plan_made_before_partitions_moved_is_not_adopted() -> None:
    w = Workload()
    holder = HeldEvents(0.2, 100)
    plan = holder.plan(as_consumed(w.start("a").events, {}), 0)
    holder.forget()  # a rebalance while the batch was being written
    holder.adopt(plan)
    assert len(holder) == 0 and holder.oldest() is None


async def test_any_batching_and_timing_writes_one_fold_and_never_commits_past_a_held_event() -> (
    None
):
    events = mixed_workload().all_events()
    queues: dict[int, list[Event]] = {p: [] for p in range(PARTITIONS)}
    for e in events:
        queues[partition_of(e)].append(e)
    for seed in range(40):
        rng = random.Random(seed)
        holder, store = HeldEvents(0.2, rng.choice([2, 10, 1000])), CountingStore()
        projector = Projector(store, memory_bytes=rng.choice([0, 1 << 20]))
        position = dict.fromkeys(queues, 0)  # the consumer's, per partition
        committed = dict.fromkeys(queues, 0)
        written: set[tuple[int, int]] = set()
        now = 0.0
        while any(position[p] < len(q) for p, q in queues.items()) or len(holder):
            batch: list[Consumed] = []
            for _ in range(rng.randint(0, 6)):
                p = rng.randrange(PARTITIONS)
                if position[p] < len(queues[p]):
                    batch.append(Consumed(queues[p][position[p]], p, position[p]))
                    position[p] += 1
            now += rng.choice([0.0, 0.05, 0.1, 0.3])
            plan = holder.plan(batch, now, may_hold=rng.random() > 0.1)
            await projector.apply(plan.project)
            if rng.random() < 0.1:
                # A crash or rebalance before the commit: consumption resumes at the
                # committed offsets, nothing held survives.
                holder.forget()
                projector.forget()
                position = dict(committed)
                continue
            written.update(
                (partition_of(e), queues[partition_of(e)].index(e)) for e in plan.project
            )
            committed.update(plan.offsets)
            holder.adopt(plan)
            for p, upto in committed.items():
                assert all((p, o) in written for o in range(upto)), (seed, p, upto)
        assert committed == {p: len(q) for p, q in queues.items()}, seed
        assert store.data == expected(events), seed


class RecordingConsumer:
    """The calls HeldFlusher.project makes on the consumer (through its PendingOffsets)."""

    def __init__(self) -> None:
        self.commits: list[dict[int, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("workflows.events", p) for p in range(PARTITIONS)}

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append({tp.partition: o for tp, o in offsets.items()})


async def test_a_batch_fetched_before_partitions_moved_is_neither_projected_nor_committed() -> None:
    # Held events at the front of a partition, dropped by a rebalance while the next batch
    # of that partition waited for the lock: projecting that batch would commit past them.
    w = Workload()
    first = w.start("a").events
    later = w.signal("a").events
    offsets: dict[int, int] = {}
    holder, store = HeldEvents(5.0, 100), CountingStore()
    consumer: Any = RecordingConsumer()
    flusher = HeldFlusher(Projector(store), holder, asyncio.Lock(), "workflows.events")
    fetched = holder.generation
    assert await flusher.project(consumer, as_consumed(first, offsets), True, fetched)
    assert consumer.commits == [{partition_of(first[0]): 0}] and len(holder) == len(first)

    stale = holder.generation
    holder.forget()  # revoked and assigned again while the next batch waited
    projected = await flusher.project(consumer, as_consumed(later, offsets), True, stale)
    assert not projected
    assert consumer.commits == [{partition_of(first[0]): 0}]  # nothing past the held start
    assert store.data == expected([])

    # Read again from the committed offset, the same events give one fold.
    offsets = {}
    again = holder.generation
    assert await flusher.project(consumer, as_consumed(first + later, offsets), False, again)
    assert store.data == expected(first + later)
    assert consumer.commits[-1] == {partition_of(first[0]): len(first) + len(later)}


async def test_coalesced_offset_commits_never_pass_a_held_event() -> None:
    # Offsets handed over between two commits go out together once due: the largest of
    # them, which is never past an event still held.
    now = [0.0]
    w = Workload()
    a, b, c = [x for x in (f"x{n}" for n in range(60)) if zlib.crc32(x.encode()) % 3 == 0][:3]
    offsets: dict[int, int] = {}
    holder, store = HeldEvents(5.0, 100), CountingStore()
    consumer: Any = RecordingConsumer()
    pending = PendingOffsets(None, 1.0, clock=lambda: now[0])
    flusher = HeldFlusher(Projector(store), holder, asyncio.Lock(), "workflows.events", pending)

    async def batch(at: float, events: list[Event]) -> None:
        now[0] = at
        assert await flusher.project(consumer, as_consumed(events, offsets), True)

    done_b = w.start(b).events + w.complete(b).events
    await batch(0.0, done_b)  # projected; its offset waits for the next due commit
    held_a = w.start(a).events
    await batch(0.5, held_a)  # held: the partition's offset stays at a's start
    await batch(1.2, w.start(c).events + w.complete(c).events)  # due: commit
    assert consumer.commits == [{0: len(done_b)}]  # a's start, not past it
    await batch(1.5, w.complete(a).events)  # a is released; not due yet
    assert len(consumer.commits) == 1
    now[0] = 2.3
    await pending.commit_if_due()  # the flusher's quiet-time commit
    assert consumer.commits == [{0: len(done_b)}, {0: offsets[0]}]
    assert store.data == expected(w.all_events())
