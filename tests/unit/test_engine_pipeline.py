"""The engine's batch pipeline (decide N+1 || store N || publish N-1) with the real
processor on the in-memory store: overlap, re-deciding on a refused store, and every
failure seeking back what was not published. The overlap is driven by gates
(`asyncio.Event`) on the store and the publisher, never by timing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any

import pytest
from aiokafka import TopicPartition

from schemas.commands import Command
from schemas.commits import Commit
from schemas.outcomes import CommandOutcome
from services.engine import pipeline as pipeline_module
from services.engine.event_store import AppendReport
from services.engine.memory_event_store import MemoryEventStore
from services.engine.outbound import Outbound
from services.engine.pipeline import Batch, EnginePipeline, Phase, _CoalescedCommits
from services.engine.processor import (
    CommandProcessor,
    Completed,
    Decision,
    Parsed,
    Round,
    StateCache,
    StoredRound,
)
from services.engine.validation import InboundRecord
from tests.support.engine import FakeConsumer, command, record, start

TOPIC = "commands"
TP0 = TopicPartition(TOPIC, 0)
WAIT_S = 5.0  # a guard against a hang, not a timed assertion


@dataclass(frozen=True)
class Pos:
    topic: str
    partition: int
    offset: int


def positions(records: Sequence[InboundRecord]) -> list[Pos]:
    return [Pos(TOPIC, r.partition, r.offset) for r in records]


class Signals:
    """Named events a test can wait for: `reached(name)` is set once `hit(name)` ran."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def reached(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    def hit(self, name: str) -> None:
        self.reached(name).set()

    async def wait(self, name: str) -> None:
        await asyncio.wait_for(self.reached(name).wait(), WAIT_S)


class GatedStore(MemoryEventStore):
    """Appends wait at `gate` (open by default) and can be made to fail; so can the
    next read of latest states (`fail_next_read`)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.fail_next_read: Exception | None = None

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

    async def latest(self, execution_ids: Collection[str]) -> dict[str, Commit]:
        if (failure := self.fail_next_read) is not None:
            self.fail_next_read = None
            raise failure
        return await super().latest(execution_ids)


def _first_id(commands: Sequence[tuple[InboundRecord, object]]) -> str:
    return str(json.loads(commands[0][0].value or b"{}")["command_id"]) if commands else "-"


class Traced:
    """The processor, logging when each step begins and ends; `signals` fire on each
    log line, so a test can wait for a step to be reached."""

    def __init__(self, processor: CommandProcessor, phases: dict[str, Phase]) -> None:
        self.processor = processor
        self.log: list[str] = []
        self.signals = Signals()
        self._phases = phases

    def _note(self, line: str) -> None:
        self.log.append(line)
        self.signals.hit(line)

    def parse(self, records: Sequence[InboundRecord]) -> Parsed:
        return self.processor.parse(records)

    def needs_stored_history(self, parsed: Parsed) -> bool:
        return self.processor.needs_stored_history(parsed)

    async def decide(self, parsed: Parsed) -> Decision:
        self._note(f"decide {_first_id(parsed.commands)}")
        return await self.processor.decide(parsed)

    async def store(self, round_: Round) -> StoredRound:
        first = _first_id(round_.todo)
        self._note(f"store {first}")
        try:
            stored = await self.processor.store(round_)
        except Exception:
            self._note(f"store failed {first}")
            raise
        self._note(f"stored {first}")
        return stored

    async def complete(self, decision: Decision, stored: StoredRound) -> Completed:
        first = _first_id(decision.round.todo)
        others_storing = any(p is Phase.STORING for c, p in self._phases.items() if c != first)
        self._note(f"complete {first}" + (" (next store started)" if others_storing else ""))
        return await self.processor.complete(decision, stored)

    def forget(self, parsed: Parsed) -> None:
        self._note("forget")
        self.processor.forget(parsed)


class SignallingConsumer(FakeConsumer):
    """`sought` is set once anything was sought back."""

    def __init__(self) -> None:
        super().__init__()
        self.sought = asyncio.Event()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        super().seek(partition, offset)
        self.sought.set()


class Published:
    def __init__(self) -> None:
        self.outs: list[Outbound] = []
        self.fail_next = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, out: Outbound) -> None:
        await self.gate.wait()
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
    processor: Traced
    published: Published
    consumer: SignallingConsumer
    pipeline: EnginePipeline
    phases: dict[str, Phase] = field(default_factory=dict)
    """Each batch's phase, by its first command id."""
    transitions: list[tuple[str, Phase]] = field(default_factory=list)
    signals: Signals = field(default_factory=Signals)
    """`"{first command id} {phase}"` fires when a batch enters a phase."""

    async def submit(self, records: list[InboundRecord]) -> None:
        await self.pipeline.submit(self.consumer, positions(records), records)

    async def drained(self) -> None:
        assert await self.pipeline.drain()


def rig(
    store: GatedStore | None = None,
    commit_every_s: float = 0.0,
    replier: pipeline_module.Replier | None = None,
) -> Rig:
    store = store or GatedStore()
    clock = count(1_700_000_000_000_000_000, 1000)
    phases: dict[str, Phase] = {}
    transitions: list[tuple[str, Phase]] = []
    signals = Signals()
    processor = Traced(
        CommandProcessor(store, StateCache(1000), lambda: next(clock)),
        phases,
    )
    published = Published()

    names: dict[Batch, str] = {}  # a batch lets its decision go once it is answered

    def observe(batch: Batch, phase: Phase) -> None:
        if batch.decision is not None:
            names[batch] = _first_id(batch.decision.parsed.commands)
        first = names.get(batch, "-")
        phases[first] = phase
        transitions.append((first, phase))
        signals.hit(f"{first} {phase.value}")

    pipeline = EnginePipeline(processor, published, 0.0, observe, commit_every_s, replier)
    return Rig(
        store, processor, published, SignallingConsumer(), pipeline, phases, transitions, signals
    )


async def test_the_next_batch_is_decided_while_the_previous_one_is_stored() -> None:
    r = rig()
    r.store.gate.clear()
    await r.submit([record(start("e1", "c1"), offset=1)])  # returns with its store held
    second = asyncio.create_task(r.submit([record(start("e2", "c2"), offset=2)]))
    await r.processor.signals.wait("decide c2")
    assert r.processor.log == ["decide c1", "store c1", "decide c2"]
    assert r.consumer.commits == []  # nothing stored, so nothing published
    r.store.gate.set()
    await second
    await r.drained()
    # c2's store started as soon as c1 was stored, before c1's answers were built.
    assert r.processor.log == [
        "decide c1",
        "store c1",
        "decide c2",
        "stored c1",
        "complete c1 (next store started)",
        "store c2",
        "stored c2",
        "complete c2",
    ]
    assert r.published.outcomes() == {"c1": (True, 1, None), "c2": (True, 1, None)}
    # Offsets committed per batch, in order, after each was published.
    assert r.consumer.commits == [{TP0: 2}, {TP0: 3}]
    assert r.phases == {"c1": Phase.COMMITTED, "c2": Phase.COMMITTED}


async def test_the_next_store_does_not_wait_for_the_publish_before_to_be_acknowledged() -> None:
    r = rig()
    r.published.gate.clear()
    await r.submit([record(start("e1", "c1"), offset=1)])
    await r.signals.wait("c1 publishing")  # completed in the background; publish held
    r.store.gate.clear()
    await r.submit([record(start("e2", "c2"), offset=2)])
    third = asyncio.create_task(r.submit([record(start("e3", "c3"), offset=3)]))
    await r.processor.signals.wait("decide c3")
    r.store.gate.set()
    # c2 is stored as decided and c1's publish is not known to fail: c3's store starts
    # while c1's acknowledgements are still awaited (c2's completion waits for them).
    await r.processor.signals.wait("stored c3")
    assert r.published.outs == [] and r.consumer.commits == []
    r.published.gate.set()
    await third
    await r.drained()
    assert [o.outcomes[0].command_id for o in r.published.outs] == ["c1", "c2", "c3"]
    assert r.consumer.commits == [{TP0: 2}, {TP0: 3}, {TP0: 4}]


async def test_a_publish_failing_after_the_next_store_started_seeks_back_what_followed() -> None:
    r = rig()
    r.published.gate.clear()
    r.published.fail_next = True
    await r.submit([record(start("e1", "c1"), offset=20)])
    await r.signals.wait("c1 publishing")
    r.store.gate.clear()
    await r.submit([record(start("e2", "c2"), offset=21)])
    third = asyncio.create_task(r.submit([record(start("e3", "c3"), offset=22)]))
    await r.processor.signals.wait("decide c3")
    r.store.gate.set()
    await r.processor.signals.wait("stored c3")  # stored early, not published
    r.published.gate.set()  # c1's publish fails now
    await third
    assert r.consumer.seeks == [(TP0, 20)]
    assert r.published.outs == [] and r.consumer.commits == []
    assert await r.store.get("e3", 1) is not None
    assert r.phases["c2"] is Phase.FAILED and r.phases["c3"] is Phase.FAILED

    # Redelivered: every stored commit is published, none applied twice.
    for offset, (e, c) in enumerate([("e1", "c1"), ("e2", "c2"), ("e3", "c3")], start=20):
        await r.submit([record(start(e, c), offset=offset)])
    await r.drained()
    assert r.published.outcomes() == {c: (True, 1, None) for c in ("c1", "c2", "c3")}
    for e in ("e1", "e2", "e3"):
        assert [c.seq async for c in r.store.read_stream(e)] == [1]
    assert r.consumer.commits == [{TP0: 21}, {TP0: 22}, {TP0: 23}]


async def test_a_batch_decided_on_a_refused_start_is_decided_again() -> None:
    r = rig()
    # Another writer started e1 already; this engine's cache does not know it.
    other = CommandProcessor(r.store, StateCache(1000), count(1).__next__)
    their_run = (await other.process([record(start("e1", "theirs"), offset=1)])).commits[0].run_id

    r.store.gate.clear()
    await r.submit([record(start("e1", "mine"), offset=5)])  # assumed new: refused on store
    signal = record(command("SignalExecution", "e1", "sig", name="go"), offset=6)
    second = asyncio.create_task(r.submit([signal]))
    await r.processor.signals.wait("decide sig")  # decided on "mine" having started e1
    r.store.gate.set()
    await second
    await r.drained()

    assert "forget" in r.processor.log
    assert r.processor.log.count("decide sig") == 2
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
    await r.processor.signals.wait("decide s1")
    r.store.fail = ConnectionError("database gone")
    r.store.gate.set()
    await second
    assert r.consumer.seeks == [(TP0, 10)]
    assert r.published.outs == [] and r.consumer.commits == []
    assert await r.store.get("e1", 1) is None
    assert r.phases == {"c1": Phase.FAILED, "s1": Phase.FAILED}

    # Consumed again once the database is back: decided from scratch, nothing lost.
    r.store.fail = None
    await r.submit([record(start("e1", "c1"), offset=10)])
    await r.submit([record(command("SignalExecution", "e1", "s1", name="x"), offset=11)])
    await r.drained()
    assert r.published.outcomes() == {"c1": (True, 1, None), "s1": (True, 2, None)}
    assert r.consumer.commits == [{TP0: 11}, {TP0: 12}]


async def test_a_failed_publish_seeks_back_what_followed_it() -> None:
    r = rig()
    r.published.fail_next = True
    await r.submit([record(start("e1", "c1"), offset=20)])
    await r.submit([record(start("e2", "c2"), offset=21)])  # completes c1, publishes it
    await r.submit([record(start("e3", "c3"), offset=22)])  # finds c1's publish failed
    assert r.consumer.seeks == [(TP0, 20)]
    assert r.consumer.commits == []
    # c2 is stored but not published; c3 was not stored at all.
    assert await r.store.get("e2", 1) is not None
    assert await r.store.get("e3", 1) is None
    assert r.processor.log.count("forget") == 1

    # Redelivery re-publishes the stored commits instead of deciding again.
    for offset, (e, c) in enumerate([("e1", "c1"), ("e2", "c2"), ("e3", "c3")], start=20):
        await r.submit([record(start(e, c), offset=offset)])
    await r.drained()
    assert r.published.outcomes() == {c: (True, 1, None) for c in ("c1", "c2", "c3")}
    for e in ("e1", "e2", "e3"):
        assert [c.seq async for c in r.store.read_stream(e)] == [1]  # each stored once


async def test_a_lone_batch_is_completed_and_published_without_a_next_one() -> None:
    r = rig()
    await r.submit([record(start("e1", "c1"), offset=30)])
    await r.signals.wait("c1 committed")
    assert r.published.outcomes() == {"c1": (True, 1, None)}
    assert r.consumer.commits == [{TP0: 31}]


async def test_a_reset_is_decided_only_after_the_batch_before_is_stored() -> None:
    r = rig()
    await r.submit([record(start("e1", "c1"), offset=40)])
    await r.drained()
    r.store.gate.clear()
    await r.submit([record(command("SignalExecution", "e1", "s1", name="x"), offset=41)])
    reset = record(command("ResetExecution", "e1", "r1", event_id=2), offset=42)
    second = asyncio.create_task(r.submit([reset]))
    await r.processor.signals.wait("store s1")
    await asyncio.sleep(0)  # let the second batch run up to where it waits
    assert "decide r1" not in r.processor.log  # waiting for s1's store first
    r.store.gate.set()
    await second
    await r.drained()
    log = r.processor.log
    # s1 was stored before the reset was decided on the history it resets within.
    assert log.index("stored s1") < log.index("decide r1") < log.index("store r1")
    assert "r1" in r.published.outcomes()


async def test_a_failed_decision_seeks_its_batch_back_and_the_one_before_completes() -> None:
    r = rig()
    await r.submit([record(start("e1", "c1"), offset=50)])
    # e0 is not cached: deciding needs a read, which fails.
    r.store.fail_next_read = ConnectionError("database gone while loading states")
    batch = [
        record(start("e2", "c2"), offset=51),
        record(command("CancelExecution", "e0", "x"), offset=52),
    ]
    await r.submit(batch)
    assert r.consumer.seeks == [(TP0, 51)]
    assert await r.store.get("e2", 1) is None  # never stored
    # Consumed again: decided from scratch (its cached states were forgotten).
    await r.submit(batch)
    await r.drained()
    outcomes = r.published.outcomes()
    assert outcomes["c1"] == (True, 1, None) and outcomes["c2"] == (True, 1, None)
    assert outcomes["x"][0] is False  # e0 does not exist
    assert r.consumer.commits == [{TP0: 51}, {TP0: 53}]


async def test_a_batch_fetched_before_a_background_seek_is_dropped_and_nothing_skipped() -> None:
    r = rig()
    r.published.gate.clear()
    await r.submit([record(start("e1", "c1"), offset=10)])
    await r.signals.wait("c1 publishing")  # completed in the background; publish held
    r.store.gate.clear()
    s1 = record(command("SignalExecution", "e1", "s1", name="x"), offset=11)
    await r.submit([s1])
    r.store.fail = ConnectionError("database blip")
    r.store.gate.set()
    # s1's store fails; its background completion waits for c1's publish.
    await r.processor.signals.wait("store failed s1")
    r.store.fail = None
    # FastStream fetched the next batch before the background completion sought back to 11.
    s2 = record(command("SignalExecution", "e1", "s2", name="y"), offset=12)
    late = asyncio.create_task(r.submit([s2]))
    r.published.gate.set()
    await late
    await r.signals.wait("c1 committed")
    assert (TP0, 11) in r.consumer.seeks
    assert await r.store.get("e1", 2) is None  # s2 was not applied ahead of s1
    # Redelivery from 11: both, in order.
    await r.submit([s1, s2])
    await r.drained()
    assert [c.command_id async for c in r.store.read_stream("e1")] == ["c1", "s1", "s2"]
    assert r.consumer.commits == [{TP0: 11}, {TP0: 13}]


async def test_a_lone_batch_whose_publish_fails_is_sought_back() -> None:
    r = rig()
    r.published.fail_next = True
    await r.submit([record(start("e1", "c1"), offset=30)])
    await asyncio.wait_for(r.consumer.sought.wait(), WAIT_S)
    assert r.consumer.seeks == [(TP0, 30)]
    assert r.consumer.commits == []
    # Redelivered: the stored commit is published.
    await r.submit([record(start("e1", "c1"), offset=30)])
    await r.drained()
    assert r.published.outcomes() == {"c1": (True, 1, None)}
    assert r.consumer.commits == [{TP0: 31}]


async def test_a_batch_moves_through_the_phases_in_order() -> None:
    r = rig()
    await r.submit([record(start("e1", "c1"), offset=60)])
    await r.drained()
    assert [p for c, p in r.transitions if c == "c1"] == [
        Phase.DECIDED,
        Phase.STORING,
        Phase.STORED,
        Phase.PUBLISHING,
        Phase.COMMITTED,
    ]


async def test_offsets_of_batches_published_within_the_interval_go_in_one_commit() -> None:
    r = rig(commit_every_s=3600)  # nothing comes due while the test runs
    await r.submit([record(start("e1", "c1"), offset=10)])
    await r.signals.wait("c1 committed")
    assert r.consumer.commits == [{TP0: 11}]  # the first one goes at once
    tp1 = TopicPartition(TOPIC, 1)
    await r.submit([record(start("e2", "c2"), offset=11)])
    await r.submit([record(start("e3", "c3"), partition=1, offset=5)])
    await r.submit([record(command("SignalExecution", "e2", "s2", name="x"), offset=12)])
    await r.signals.wait("s2 committed")  # published: its offset is queued
    assert r.consumer.commits == [{TP0: 11}]
    assert set(r.published.outcomes()) == {"c1", "c2", "c3", "s2"}
    # Before a rebalance or a shutdown the queued offsets go, the latest per partition.
    await r.drained()
    assert r.consumer.commits == [{TP0: 11}, {TP0: 13, tp1: 6}]


async def test_the_first_commit_goes_at_once_on_a_box_booted_less_than_the_interval_ago(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # time.monotonic counts from boot: 100 s after it, an interval of an hour.
    monkeypatch.setattr(pipeline_module.time, "monotonic", lambda: 100.0)
    r = rig(commit_every_s=3600)
    await r.submit([record(start("e1", "c1"), offset=10)])
    await r.signals.wait("c1 committed")
    assert r.consumer.commits == [{TP0: 11}]


async def test_queued_offsets_are_committed_once_the_interval_has_passed() -> None:
    r = rig(commit_every_s=0.05)
    await r.submit([record(start("e1", "c1"), offset=10)])
    await r.signals.wait("c1 committed")
    await r.submit([record(start("e2", "c2"), offset=11)])
    await r.signals.wait("c2 committed")
    # No later batch and no drain: the timer commits it.
    for _ in range(int(WAIT_S / 0.01)):
        if len(r.consumer.commits) == 2:
            break
        await asyncio.sleep(0.01)
    assert r.consumer.commits == [{TP0: 11}, {TP0: 12}]


async def test_a_failed_publish_after_queued_offsets_commits_only_what_was_published() -> None:
    r = rig(commit_every_s=3600)
    await r.submit([record(start("e1", "c1"), offset=10)])
    await r.signals.wait("c1 committed")
    await r.submit([record(start("e2", "c2"), offset=11)])
    await r.signals.wait("c2 committed")  # queued
    r.published.fail_next = True
    await r.submit([record(start("e3", "c3"), offset=12)])
    await r.signals.wait("c3 failed")
    await r.consumer.sought.wait()
    assert r.consumer.seeks == [(TP0, 12)]
    await r.pipeline.drain()
    assert r.consumer.commits == [{TP0: 11}, {TP0: 12}]


class RevokedPartitionConsumer(FakeConsumer):
    """Refuses any commit that names a partition it no longer owns, as aiokafka does."""

    def __init__(self, revoked: TopicPartition) -> None:
        super().__init__()
        self.revoked = revoked

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.revoked in offsets:
            raise RuntimeError(f"partition {self.revoked} is not assigned")
        await super().commit(offsets)


async def test_a_revoked_partition_in_coalesced_offsets_does_not_cost_the_others_their_commit() -> (
    None
):
    owned, revoked = (
        TopicPartition("workflows.commands", 0),
        TopicPartition("workflows.commands", 1),
    )
    consumer = RevokedPartitionConsumer(revoked)
    commits = _CoalescedCommits(every_s=60.0)
    await commits.commit(consumer, {owned: 10})  # the first commit goes at once
    await commits.commit(consumer, {revoked: 5})  # queued behind the interval
    await commits.commit(consumer, {owned: 12})
    await commits.flush()
    assert consumer.commits == [{owned: 10}, {owned: 12}]


class Replies:
    """A replier that notes which outcomes it was given (records with any header wait)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.commits: list[str] = []
        self.signals = Signals()
        self.fail: Exception | None = None

    def routes(self, commands: Sequence[tuple[InboundRecord, Command]]) -> set[str] | None:
        if self.fail is not None:
            raise self.fail
        waiting = {c.command_id for r, c in commands if r.headers}
        return waiting or None

    def send(
        self,
        routes: set[str],
        outcomes: Sequence[CommandOutcome],
        commits: Sequence[Commit],
        encoded: dict[int, bytes],
    ) -> None:
        self.commits.extend(c.command_id for c in commits)
        for o in outcomes:
            if o.command_id in routes:
                self.sent.append(o.command_id)
                self.signals.hit(f"sent {o.command_id}")


def waited_for(r: InboundRecord) -> InboundRecord:
    return replace(r, headers=(("runstore-reply", b"127.0.0.1:1/t"),))


async def test_a_batchs_replies_go_out_before_the_publish_before_it_is_acknowledged() -> None:
    replies = Replies()
    r = rig(replier=replies)
    r.published.gate.clear()  # no publish is ever acknowledged
    await r.submit([waited_for(record(start("e1", "c1"), offset=1))])
    await r.signals.wait("c1 publishing")
    await r.submit([waited_for(record(start("e2", "c2"), offset=2)), record(start("e3", "c3"))])
    # c2's batch is completed in the background: its reply goes out, then it waits for
    # c1's publish (held); c3 had no reply header.
    await replies.signals.wait("sent c2")
    await r.signals.wait("c2 stored")
    assert replies.sent == ["c1", "c2"]
    # With the batches' commits (the replier sends the STARTED events of the ones waited for).
    assert replies.commits == ["c1", "c2", "c3"]
    assert r.published.outs == [] and r.consumer.commits == []
    assert r.phases["c2"] is Phase.STORED
    r.published.gate.set()
    await r.drained()
    assert [o.command_id for out in r.published.outs for o in out.outcomes] == ["c1", "c2", "c3"]


async def test_a_batch_stored_whole_replies_from_its_store_before_its_completion() -> None:
    # Its insert went in whole: the replies go from the store task as soon as it is
    # answered, before the batch is completed (which waits for the pipeline's lock, held
    # meanwhile by the next batch's decision).
    replies = Replies()
    r = rig(replier=replies)
    seen: list[Phase | None] = []
    sent = replies.send

    def noting(*args: Any) -> None:
        seen.append(r.phases.get("c1"))
        sent(*args)

    replies.send = noting  # type: ignore[method-assign]
    await r.submit([waited_for(record(start("e1", "c1"), offset=1))])
    await r.drained()
    assert replies.sent == ["c1"]
    assert seen == [Phase.STORING]
    assert r.published.outcomes()["c1"][0] is True


async def test_a_command_id_stored_before_is_answered_as_its_record_not_from_the_store_task() -> (
    None
):
    # A waited-for signal reuses a command id already stored (its start): the ordered
    # append refuses it, so the batch was not stored whole and its reply must be what the
    # completion answers (the stored command's outcome), the same as the published record.
    replies = Replies()
    r = rig(replier=replies)
    await r.submit([record(start("e2", "c0"), offset=0)])
    await r.drained()
    answered: list[tuple[str, bool, int | None]] = []
    sent = replies.send

    def noting(
        routes: set[str],
        outcomes: Sequence[CommandOutcome],
        commits: Sequence[Commit],
        encoded: dict[int, bytes],
    ) -> None:
        answered.extend(
            (o.command_id, o.accepted, o.seq) for o in outcomes if o.command_id in routes
        )
        sent(routes, outcomes, commits, encoded)

    replies.send = noting  # type: ignore[method-assign]
    signal = command("SignalExecution", "e2", "c0", name="s")
    await r.submit([waited_for(record(signal, offset=1))])
    await r.drained()
    published = r.published.outcomes()["c0"]
    assert answered == [("c0", published[0], published[1])]
    assert answered == [("c0", True, 1)]


async def test_a_batch_not_stored_whole_replies_after_its_completion() -> None:
    # An execution assumed new exists already: the batch is decided again in part, and
    # only its completion knows the answers.
    replies = Replies()
    r = rig(replier=replies)
    await r.submit([record(start("e1", "c0"), offset=0)])
    await r.drained()
    r.processor.processor.forget(r.processor.parse([record(start("e1", "c0"), offset=0)]))
    await r.submit(
        [
            waited_for(record(start("e1", "c1"), offset=1)),
            waited_for(record(start("e2", "c2"), offset=2)),
        ]
    )
    await r.drained()
    assert sorted(replies.sent) == ["c1", "c2"]
    assert r.published.outcomes()["c1"][0] is False  # e1 existed: rejected after a read
    assert r.published.outcomes()["c2"][0] is True


async def test_a_failed_store_sends_no_reply() -> None:
    replies = Replies()
    r = rig(replier=replies)
    r.store.fail = ConnectionError("database gone")
    await r.submit([waited_for(record(start("e1", "c1"), offset=1))])
    await asyncio.wait_for(r.consumer.sought.wait(), WAIT_S)
    assert replies.sent == []
    r.store.fail = None
    await r.submit([waited_for(record(start("e1", "c1"), offset=1))])
    await r.drained()
    assert replies.sent == ["c1"]


async def test_a_batch_whose_reply_headers_cannot_be_read_is_still_applied_and_published() -> None:
    replies = Replies()
    replies.fail = AttributeError("a header the replier cannot read")
    r = rig(replier=replies)
    await r.submit([waited_for(record(start("e1", "c1"), offset=1)), record(start("e2", "c2"))])
    await r.drained()
    assert replies.sent == []
    assert [o.command_id for out in r.published.outs for o in out.outcomes] == ["c1", "c2"]
    assert r.consumer.sought.is_set() is False
