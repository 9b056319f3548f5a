"""The engine's three overlapping stages (decide N+1 || store N || publish N-1) with the
real processor on the in-memory store: overlap, re-deciding on a refused store, and
every failure seeking back what was not published."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from itertools import count

from aiokafka import TopicPartition

from schemas.commits import Commit
from services.engine.event_store import AppendReport
from services.engine.memory_event_store import InMemoryEventStore
from services.engine.pipeline import EnginePipeline
from services.engine.processor import CommandProcessor, InboundRecord, Outbound, Plan, StateCache
from tests.unit.test_pipeline import FakeConsumer
from tests.unit.test_processor import command, record, start

TOPIC = "commands"
TP0 = TopicPartition(TOPIC, 0)


@dataclass(frozen=True)
class Pos:
    topic: str
    partition: int
    offset: int


def positions(records: Sequence[InboundRecord]) -> list[Pos]:
    return [Pos(TOPIC, r.partition, r.offset) for r in records]


class GatedStore(InMemoryEventStore):
    """Appends wait for `gate` (open by default) and can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def _enter(self) -> None:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail

    async def append(self, commits: Sequence[Commit]) -> AppendReport:
        await self._enter()
        return await super().append(commits)

    async def append_first(self, commits: Sequence[Commit]) -> set[int]:
        await self._enter()
        return await super().append_first(commits)


class Traced:
    """The processor's stages, logging when each begins and ends."""

    def __init__(self, processor: CommandProcessor) -> None:
        self.processor = processor
        self.log: list[str] = []

    async def decide(
        self,
        records: Sequence[InboundRecord],
        settle: Callable[[], Awaitable[object]] | None = None,
    ) -> Plan:
        name = records[0].value.decode() if records and records[0].value else "?"
        self.log.append(f"decide {_command_id(name)}")
        return await self.processor.decide(records, settle)

    async def store(self, plan: Plan) -> None:
        first = plan.todo[0][1].command_id if plan.todo else "-"
        self.log.append(f"store {first}")
        await self.processor.store(plan)
        self.log.append(f"stored {first}")

    async def finish(self, plan: Plan) -> Outbound:
        first = plan.todo[0][1].command_id if plan.todo else "-"
        self.log.append(f"finish {first}" + (" (next store started)" if self.storing() else ""))
        return await self.processor.finish(plan)

    def storing(self) -> bool:
        """Whether the pipeline has a store in flight (set by the rig)."""
        return False

    def forget(self, plan: Plan) -> None:
        self.log.append("forget")
        self.processor.forget(plan)


def _command_id(value: str) -> str:
    return str(json.loads(value)["command_id"])


class Published:
    def __init__(self) -> None:
        self.outs: list[Outbound] = []
        self.fail_next = False

    async def __call__(self, out: Outbound) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker gone")
        self.outs.append(out)

    def outcomes(self) -> dict[str, tuple[bool, int | None, str | None]]:
        return {
            o.command_id: (o.accepted, o.seq, o.code.value if o.code else None)
            for out in self.outs
            for o in out.outcomes
        }


@dataclass
class Rig:
    store: GatedStore
    stages: Traced
    published: Published
    consumer: FakeConsumer
    pipeline: EnginePipeline

    async def submit(self, records: list[InboundRecord]) -> None:
        await self.pipeline.submit(self.consumer, positions(records), records)


def rig() -> Rig:
    store = GatedStore()
    clock = count(1_700_000_000_000_000_000, 1000)
    processor = CommandProcessor(store, StateCache(1000), lambda: next(clock))
    stages, published = Traced(processor), Published()
    pipeline = EnginePipeline(stages, published, 0.0)
    stages.storing = lambda: pipeline._storing is not None  # type: ignore[method-assign]
    return Rig(store, stages, published, FakeConsumer(), pipeline)


async def settle(r: Rig) -> None:
    assert await r.pipeline.flush()


async def test_the_next_batch_is_decided_while_the_previous_one_is_stored() -> None:
    r = rig()
    r.store.gate.clear()
    await r.submit([record(start("e1", "c1"), offset=1)])  # returns with its store held
    second = asyncio.create_task(r.submit([record(start("e2", "c2"), offset=2)]))
    await asyncio.sleep(0.01)
    assert r.stages.log == ["decide c1", "store c1", "decide c2"]
    assert r.consumer.commits == []  # nothing stored, so nothing published
    r.store.gate.set()
    await second
    await settle(r)
    # c2's store started as soon as c1 was stored, before c1's answers were built.
    assert r.stages.log == [
        "decide c1",
        "store c1",
        "decide c2",
        "stored c1",
        "finish c1 (next store started)",
        "store c2",
        "stored c2",
        "finish c2",
    ]
    assert r.published.outcomes() == {"c1": (True, 1, None), "c2": (True, 1, None)}
    # Offsets committed per batch, in order, after each was published.
    assert r.consumer.commits == [{TP0: 2}, {TP0: 3}]


async def test_a_batch_decided_on_a_refused_start_is_decided_again() -> None:
    r = rig()
    # Another writer started e1 already; this engine's cache does not know it.
    other = rig()
    await other.submit([record(start("e1", "theirs"), offset=1)])
    await settle(other)
    r.store._streams = other.store._streams
    r.store._by_command = other.store._by_command
    their_run = other.published.outs[0].commits[0].run_id

    r.store.gate.clear()
    await r.submit([record(start("e1", "mine"), offset=5)])  # assumed new: refused on store
    signal = record(command("SignalExecution", "e1", "sig", name="go"), offset=6)
    second = asyncio.create_task(r.submit([signal]))
    await asyncio.sleep(0.01)
    assert r.stages.log[-1] == "decide sig"  # decided on "mine" having started e1
    r.store.gate.set()
    await second
    await settle(r)

    assert "forget" in r.stages.log
    assert r.stages.log.count("decide sig") == 2
    outcomes = r.published.outcomes()
    assert outcomes["mine"][0] is False  # e1 is running: a second start is rejected
    assert outcomes["sig"] == (True, 2, None)
    stored = await r.store.get("e1", 2)
    assert stored is not None and stored.command_id == "sig"
    assert stored.run_id == their_run  # the signal went to the run that exists


async def test_a_failed_store_seeks_back_both_batches_and_stores_neither() -> None:
    r = rig()
    r.store.gate.clear()
    await r.submit([record(start("e1", "c1"), offset=10)])
    second = asyncio.create_task(
        r.submit([record(command("SignalExecution", "e1", "s1", name="x"), offset=11)])
    )
    await asyncio.sleep(0.01)
    r.store.fail = ConnectionError("database gone")
    r.store.gate.set()
    await second
    assert r.consumer.seeks == [(TP0, 10)]
    assert r.published.outs == [] and r.consumer.commits == []
    assert await r.store.get("e1", 1) is None

    # Consumed again once the database is back: decided from scratch, nothing lost.
    r.store.fail = None
    await r.submit([record(start("e1", "c1"), offset=10)])
    await r.submit([record(command("SignalExecution", "e1", "s1", name="x"), offset=11)])
    await settle(r)
    assert r.published.outcomes() == {"c1": (True, 1, None), "s1": (True, 2, None)}
    assert r.consumer.commits == [{TP0: 11}, {TP0: 12}]


async def test_a_failed_publish_seeks_back_what_followed_it() -> None:
    r = rig()
    r.published.fail_next = True
    await r.submit([record(start("e1", "c1"), offset=20)])
    await r.submit([record(start("e2", "c2"), offset=21)])  # finishes c1, publishes it
    await r.submit([record(start("e3", "c3"), offset=22)])  # finds c1's publish failed
    assert r.consumer.seeks == [(TP0, 20)]
    assert r.consumer.commits == []
    # c2 is stored but not published; c3 was not stored at all.
    assert await r.store.get("e2", 1) is not None
    assert await r.store.get("e3", 1) is None
    assert r.stages.log.count("forget") == 1

    # Redelivery re-publishes the stored commits instead of deciding again.
    for offset, (e, c) in enumerate([("e1", "c1"), ("e2", "c2"), ("e3", "c3")], start=20):
        await r.submit([record(start(e, c), offset=offset)])
    await settle(r)
    assert r.published.outcomes() == {c: (True, 1, None) for c in ("c1", "c2", "c3")}
    assert len(r.store._by_command) == 3


async def test_a_lone_batch_is_finished_and_published_without_a_next_one() -> None:
    r = rig()
    await r.submit([record(start("e1", "c1"), offset=30)])
    for _ in range(100):
        if r.consumer.commits:
            break
        await asyncio.sleep(0.01)
    assert r.published.outcomes() == {"c1": (True, 1, None)}
    assert r.consumer.commits == [{TP0: 31}]


async def test_a_reset_is_decided_only_after_the_batch_before_is_stored() -> None:
    r = rig()
    await r.submit([record(start("e1", "c1"), offset=40)])
    await settle(r)
    r.store.gate.clear()
    await r.submit([record(command("SignalExecution", "e1", "s1", name="x"), offset=41)])
    reset = record(command("ResetExecution", "e1", "r1", event_id=2), offset=42)
    second = asyncio.create_task(r.submit([reset]))
    await asyncio.sleep(0.01)
    assert "decide r1" in r.stages.log
    assert r.stages.log[-1] == "decide r1"  # waiting inside decide for s1's store
    r.store.gate.set()
    await second
    await settle(r)
    log = r.stages.log
    # s1 was stored before the reset read the history it resets within.
    assert log.index("stored s1") < log.index("store r1")
    assert "r1" in r.published.outcomes()


async def test_a_failed_decision_seeks_its_batch_back_and_the_one_before_completes() -> None:
    r = rig()
    latest = r.store.latest
    failures = [ConnectionError("database gone while loading states")]

    async def flaky(execution_ids: Collection[str]) -> dict[str, Commit]:
        if failures:
            raise failures.pop()
        return await latest(execution_ids)

    r.store.latest = flaky  # type: ignore[method-assign]
    await r.submit([record(start("e1", "c1"), offset=50)])
    # e0 is not cached: deciding needs a read, which fails.
    batch = [
        record(start("e2", "c2"), offset=51),
        record(command("CancelExecution", "e0", "x"), offset=52),
    ]
    await r.submit(batch)
    assert r.consumer.seeks == [(TP0, 51)]
    assert await r.store.get("e2", 1) is None  # never stored
    # Consumed again: decided from scratch (its cached states were forgotten).
    await r.submit(batch)
    await settle(r)
    outcomes = r.published.outcomes()
    assert outcomes["c1"] == (True, 1, None) and outcomes["c2"] == (True, 1, None)
    assert outcomes["x"][0] is False  # e0 does not exist
    assert r.consumer.commits == [{TP0: 51}, {TP0: 53}]


async def test_a_batch_fetched_before_a_background_seek_is_dropped_and_nothing_skipped() -> None:
    r = rig()
    publish, release = r.pipeline._publish, asyncio.Event()

    async def slow(out: Outbound) -> None:
        await release.wait()
        await publish(out)

    r.pipeline._publish = slow  # type: ignore[method-assign]
    await r.submit([record(start("e1", "c1"), offset=10)])
    await asyncio.sleep(0.02)  # its finisher finished it; its publish is held
    r.store.gate.clear()
    s1 = record(command("SignalExecution", "e1", "s1", name="x"), offset=11)
    await r.submit([s1])
    r.store.fail = ConnectionError("database blip")
    r.store.gate.set()
    await asyncio.sleep(0.01)  # s1's store failed; its finisher waits for c1's publish
    r.store.fail = None
    # FastStream fetched the next batch before the finisher sought back to 11.
    s2 = record(command("SignalExecution", "e1", "s2", name="y"), offset=12)
    late = asyncio.create_task(r.submit([s2]))
    await asyncio.sleep(0.01)
    release.set()
    await late
    assert (TP0, 11) in r.consumer.seeks
    assert await r.store.get("e1", 2) is None  # s2 was not applied ahead of s1
    # Redelivery from 11: both, in order.
    await r.submit([s1, s2])
    await settle(r)
    assert [c.command_id async for c in r.store.read_stream("e1")] == ["c1", "s1", "s2"]
    assert r.consumer.commits == [{TP0: 11}, {TP0: 13}]


async def test_a_lone_batch_whose_publish_fails_is_sought_back() -> None:
    r = rig()
    r.published.fail_next = True
    await r.submit([record(start("e1", "c1"), offset=30)])
    for _ in range(100):
        if r.consumer.seeks:
            break
        await asyncio.sleep(0.01)
    assert r.consumer.seeks == [(TP0, 30)]
    assert r.consumer.commits == []
    # Redelivered: the stored commit is published.
    await r.submit([record(start("e1", "c1"), offset=30)])
    await settle(r)
    assert r.published.outcomes() == {"c1": (True, 1, None)}
    assert r.consumer.commits == [{TP0: 31}]
