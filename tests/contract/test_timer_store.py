"""The TimerStore contract, written once and run against both adapters: the in-memory one
and MongoTimerStore on the test session's MongoDB-protocol server."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.timers import Timer, TimerAction
from services.timers.pending import Placed
from services.timers.timer_store import MemoryTimerStore, MongoTimerStore, TimerStore


def placed(partition: int, execution_id: str, timer_id: str, fire_at_ns: int = 10) -> Placed:
    timer = Timer(
        execution_id=execution_id,
        run_id=f"{execution_id}-run",
        timer_id=timer_id,
        fire_at_ns=fire_at_ns,
        action=TimerAction.FIRE,
    )
    return Placed(partition=partition, timer=timer)


class TimerStoreContract:
    async def test_nothing_stored_loads_an_empty_list_per_partition(
        self, store: TimerStore
    ) -> None:
        assert await store.load([0, 3]) == {0: [], 3: []}
        assert await store.load([]) == {}

    async def test_a_partition_loads_only_its_own_timers(self, store: TimerStore) -> None:
        a, b, c = placed(0, "e1", "t1"), placed(0, "e2", "t1"), placed(1, "e3", "t1")
        await store.write([a, b, c], [])
        loaded = await store.load([0, 2])
        assert sorted(t.key for t in loaded[0]) == sorted([a.timer.key, b.timer.key])
        assert loaded[2] == []
        assert await store.count() == 3

    async def test_writing_a_timer_again_replaces_it(self, store: TimerStore) -> None:
        await store.write([placed(0, "e1", "t1", fire_at_ns=10)], [])
        await store.write([placed(0, "e1", "t1", fire_at_ns=99)], [])
        assert [t.fire_at_ns for t in (await store.load([0]))[0]] == [99]
        assert await store.count() == 1

    async def test_deletes_remove_by_key_and_unknown_keys_are_harmless(
        self, store: TimerStore
    ) -> None:
        keep, drop = placed(0, "e1", "t1"), placed(0, "e1", "t2")
        await store.write([keep, drop], [])
        await store.write([], [drop.timer.key, "no:such:timer"])
        await store.write([], [drop.timer.key])  # again: idempotent
        assert [t.key for t in (await store.load([0]))[0]] == [keep.timer.key]

    async def test_one_write_may_put_and_delete(self, store: TimerStore) -> None:
        old, new = placed(1, "e1", "t1"), placed(1, "e1", "t2")
        await store.write([old], [])
        await store.write([new], [old.timer.key])
        assert [t.key for t in (await store.load([1]))[1]] == [new.timer.key]


class TestMemoryTimerStore(TimerStoreContract):
    @pytest.fixture
    def store(self) -> TimerStore:
        return MemoryTimerStore()


class TestMongoTimerStore(TimerStoreContract):
    @pytest.fixture
    async def store(self, db: Any) -> TimerStore:
        store = MongoTimerStore(db)
        await store.setup()
        return store
