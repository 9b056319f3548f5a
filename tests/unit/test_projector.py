"""The Projector's I/O on an in-memory store: what it reads and how it writes.

New executions are inserted without a read; executions it wrote recently are folded onto
the documents it remembers, without a read; a re-delivery of an execution assumed new is
found by the refused insert and folded onto what is stored. Whatever the path, the
documents equal one fold of every event (`fold_all`).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping

import pytest

from schemas.events import Event
from services.common.readmodels.memory_store import MemoryReadModels
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS, Document
from services.projector.projector import ConcurrentWriter, Projector
from tests.support.workloads import Workload, fold_all, mixed_workload


class CountingStore(MemoryReadModels):
    """Counts `_id` reads, inserts and replaces per collection."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {RUNS: 0, EXECUTIONS: 0, HISTORY: 0}
        self.inserted: dict[str, int] = {RUNS: 0, EXECUTIONS: 0, HISTORY: 0}
        self.replaced: dict[str, int] = {RUNS: 0, EXECUTIONS: 0, HISTORY: 0}

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        self.reads[collection] += len(ids)
        return await super().load(collection, ids)

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        self.replaced[collection] += len(docs)
        await super().save(collection, docs)

    async def insert_new(self, collection: str, docs: Mapping[str, Document]) -> set[str]:
        existing = await super().insert_new(collection, docs)
        self.inserted[collection] += len(docs) - len(existing)
        return existing

    def total(self, counts: dict[str, int]) -> int:
        return sum(counts.values())


def expected(events: list[Event]) -> dict[str, dict[str, Document]]:
    """What one fold of `events` writes, in stored form."""
    history, runs, pointers = fold_all(events).changes()
    return {HISTORY: history, RUNS: runs, EXECUTIONS: pointers}


def starts(n: int) -> list[Event]:
    w = Workload()
    for i in range(n):
        w.start(f"x{i}")
    return w.all_events()


async def test_new_executions_are_inserted_without_a_single_read() -> None:
    store = CountingStore()
    events = starts(50)
    await Projector(store).apply(events)
    assert store.total(store.reads) == 0
    assert store.total(store.replaced) == 0
    # A start is a run row holding its first events (the head) and a pointer: no chunk.
    assert store.inserted == {HISTORY: 0, RUNS: 50, EXECUTIONS: 50}
    assert store.data == expected(events)


async def test_a_new_execution_with_more_events_in_the_batch_is_written_once_per_document() -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 5)
    w.complete("a", result=1)
    store = CountingStore()
    await Projector(store).apply(w.all_events())
    assert store.total(store.reads) == 0
    assert store.inserted == {HISTORY: 0, RUNS: 1, EXECUTIONS: 1}
    assert store.data == expected(w.all_events())


async def test_a_busy_execution_is_folded_onto_remembered_documents_without_reads() -> None:
    w = Workload()
    w.start("a")
    store = CountingStore()
    projector = Projector(store)
    await projector.apply(w.all_events())
    done = len(w.all_events())
    for _ in range(3):
        w.signal("a")
        await projector.apply(w.all_events()[done:])
        done = len(w.all_events())
    w.complete("a", result=7)
    await projector.apply(w.all_events()[done:])
    assert store.total(store.reads) == 0
    assert store.replaced == {HISTORY: 0, RUNS: 4, EXECUTIONS: 4}
    assert store.data == expected(w.all_events())


async def test_after_forget_the_documents_are_read_again() -> None:
    w = Workload()
    w.start("a")
    store = CountingStore()
    projector = Projector(store)
    await projector.apply(w.all_events())
    projector.forget()
    w.signal("a")
    await projector.apply(w.all_events()[-1:])
    # Chunk 0 is the row's head: it is not read as a document.
    assert store.reads == {HISTORY: 0, RUNS: 1, EXECUTIONS: 1}
    assert store.data == expected(w.all_events())


async def test_a_redelivered_start_is_found_by_its_refused_insert_and_changes_nothing() -> None:
    w = mixed_workload()
    events = w.all_events()
    store = CountingStore()
    await Projector(store).apply(events)
    once = {name: dict(docs) for name, docs in store.data.items()}
    replaced = store.total(store.replaced)
    # A projector that remembers nothing (restarted) is handed everything again.
    await Projector(store).apply(events)
    assert store.data == once
    assert store.total(store.replaced) == replaced, "nothing changed: nothing replaced"


async def test_a_redelivery_across_a_crash_between_writes_completes_the_documents() -> None:
    """The first attempt wrote history and runs, then died before the pointers."""
    events = starts(5)
    crashed = CountingStore()
    await Projector(crashed).apply(events)
    crashed.data[EXECUTIONS].clear()
    await Projector(crashed).apply(events)
    assert crashed.data == expected(events)


async def test_any_batching_with_one_remembering_projector_gives_one_fold() -> None:
    events = mixed_workload().all_events()
    rnd = random.Random(7)
    for _ in range(20):
        store = CountingStore()
        projector = Projector(store)
        k = 0
        while k < len(events):
            step = rnd.randrange(1, 6)
            batch = events[k : k + step]
            if rnd.random() < 0.3:  # re-deliver some old events with it
                batch = events[max(0, k - 4) : k] + batch
            if rnd.random() < 0.2:
                projector.forget()
            await projector.apply(batch)
            k += step
        assert store.data == expected(events)


async def test_a_tiny_memory_still_gives_one_fold() -> None:
    events = mixed_workload().all_events()
    store = CountingStore()
    projector = Projector(store, memory_bytes=4096)
    for e in events:
        await projector.apply([e])
    assert store.data == expected(events)
    assert len(projector.known) <= 2


async def test_documents_appearing_under_a_second_reading_are_a_concurrent_writer() -> None:
    class Racing(CountingStore):
        async def insert_new(self, collection: str, docs: Mapping[str, Document]) -> set[str]:
            return set(docs)  # someone else always wrote it first

    with pytest.raises(ConcurrentWriter):
        await Projector(Racing()).apply(starts(1))
