"""The bound on run-list queries (services/api/list_budget.py), over a reader whose lists
block until the test lets them go: turns, budgets, and point reads that never wait."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest

from services.api.list_budget import BoundedLists, ListBudgetExceeded
from services.common.readmodels.run_filter import Cursor, RunFilter
from services.common.readmodels.store import RUNS, Document


class HeldLists:
    """A ReadModelReader whose `list_runs` waits for `release`; `_id` reads answer at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.running = 0
        self.cancelled = 0

    async def get(
        self, collection: str, doc_id: str, *, without: Collection[str] = ()
    ) -> Document | None:
        return {"_id": doc_id}

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        return {i: {"_id": i} for i in ids}

    async def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        self.running += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return [{"_id": "r1"}]


async def test_a_list_past_its_budget_is_refused_and_stopped() -> None:
    inner = HeldLists()
    lists = BoundedLists(inner, concurrency=2, seconds=0.05)
    with pytest.raises(ListBudgetExceeded, match="list_timeout"):
        # The adapter ignores pymongo's timeout here, so the grace period ends it.
        await lists.list_runs(RunFilter(), None, 10)
    assert inner.cancelled == 1 and inner.running == 0


async def test_a_list_waits_for_a_turn_and_is_refused_when_none_comes() -> None:
    inner = HeldLists()
    # The held list keeps its turn (a long grace: the fake ignores pymongo's timeout).
    lists = BoundedLists(inner, concurrency=1, seconds=0.05, grace=600)
    held = asyncio.create_task(lists.list_runs(RunFilter(), None, 10))
    await inner.started.wait()

    with pytest.raises(ListBudgetExceeded, match="list_busy"):
        await lists.list_runs(RunFilter(), None, 10)
    assert inner.running == 1  # the refused list never reached the store

    # Point reads go straight through while every turn is taken.
    assert await lists.get(RUNS, "x") == {"_id": "x"}
    assert await lists.load(RUNS, ["a", "b"]) == {"a": {"_id": "a"}, "b": {"_id": "b"}}
    inner.release.set()
    assert await held == [{"_id": "r1"}]


async def test_a_list_runs_once_a_turn_is_free() -> None:
    inner = HeldLists()
    lists = BoundedLists(inner, concurrency=1, seconds=600)
    first = asyncio.create_task(lists.list_runs(RunFilter(), None, 10))
    second = asyncio.create_task(lists.list_runs(RunFilter(), None, 10))
    await inner.started.wait()
    await asyncio.sleep(0.01)
    assert inner.running == 1  # the second waits for the first's turn
    inner.release.set()
    assert await first == await second == [{"_id": "r1"}]
