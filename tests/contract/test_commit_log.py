"""The CommitLog contract, written once and run against every adapter: the in-memory
one the unit tests use, and MongoCommitLog on the test session's MongoDB-protocol server
(commits written by the engine's own MongoEventStore, as in production)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from schemas.commits import Commit
from services.common.commit_log import CommitLog
from services.common.memory_commit_log import MemoryCommitLog
from services.common.mongo_commit_log import MongoCommitLog
from services.engine.mongo_event_store import MongoEventStore
from tests.support.commits import make_commit

Append = Callable[[Sequence[Commit]], Awaitable[None]]


def commit(execution_id: str, seq: int) -> Commit:
    """A commit as the engine stores it: seq 1 opens run `{execution_id}-run`."""
    return make_commit(execution_id, seq, run_id=f"{execution_id}-run")


def stream(execution_id: str, length: int) -> list[Commit]:
    return [commit(execution_id, s) for s in range(1, length + 1)]


class CommitLogContract:
    """Subclasses provide `log` and `append`; every adapter must pass all of these."""

    async def test_a_commit_is_read_back_by_its_position(
        self, log: CommitLog, append: Append
    ) -> None:
        commits = stream("e1", 2)
        await append(commits)
        assert await log.get("e1", 2) == commits[1]
        assert await log.get("e1", 3) is None
        assert await log.get("unknown", 1) is None

    @pytest.mark.parametrize("length", [0, 1, 2, 5, 40, 70])
    async def test_read_after_returns_every_later_commit_in_order(
        self, log: CommitLog, append: Append, length: int
    ) -> None:
        commits = stream("e1", length)
        await append(commits)
        assert await log.read_after("e1", 0) == commits
        assert [c.seq for c in await log.read_after("e1", 1)] == list(range(2, length + 1))
        assert await log.read_after("e1", length) == []
        assert await log.read_after("e1", length + 5) == []

    async def test_read_after_stops_at_a_limit(self, log: CommitLog, append: Append) -> None:
        await append(stream("e1", 40))
        assert [c.seq for c in await log.read_after("e1", 3, limit=4)] == [4, 5, 6, 7]
        assert [c.seq for c in await log.read_after("e1", 0, limit=37)] == list(range(1, 38))
        assert [c.seq for c in await log.read_after("e1", 38, limit=10)] == [39, 40]
        assert await log.read_after("e1", 0, limit=0) == []

    async def test_read_after_reads_only_its_own_execution(
        self, log: CommitLog, append: Append
    ) -> None:
        await append(stream("a", 3) + stream("a-1", 2) + stream("b", 1))
        assert [(c.execution_id, c.seq) for c in await log.read_after("a", 0)] == [
            ("a", 1),
            ("a", 2),
            ("a", 3),
        ]

    async def test_scan_yields_every_commit_in_id_order(
        self, log: CommitLog, append: Append
    ) -> None:
        # Ids sharing a prefix: `_id` order ('-' sorts before ':') differs from the order
        # of (execution_id, seq), and both adapters must agree on it.
        await append(stream("b", 2) + stream("a", 2) + stream("a-1", 2))
        seen = [c.doc_id async for c in log.scan()]
        assert seen == sorted(seen)
        assert [d.split(":")[0] for d in seen] == ["a-1", "a-1", "a", "a", "b", "b"]
        # About as many: a store may count the three runs' locators too.
        assert 6 <= await log.count() <= 9

    async def test_a_run_is_located_once_its_opening_commit_is_stored(
        self, log: CommitLog, append: Append
    ) -> None:
        assert await log.locate_run("e1-run") is None
        await append(stream("e1", 2))
        assert await log.locate_run("e1-run") == "e1"
        assert await log.locate_run("e1") is None


class TestMemoryCommitLog(CommitLogContract):
    @pytest.fixture
    def log(self) -> MemoryCommitLog:
        return MemoryCommitLog()

    @pytest.fixture
    def append(self, log: MemoryCommitLog) -> Append:
        async def add(commits: Sequence[Commit]) -> None:
            log.add(commits)

        return add


class TestMongoCommitLog(CommitLogContract):
    @pytest.fixture
    def log(self, db: Any) -> MongoCommitLog:
        return MongoCommitLog(db)

    @pytest.fixture
    async def append(self, db: Any) -> Append:
        store = MongoEventStore(db)
        await store.setup()

        async def add(commits: Sequence[Commit]) -> None:
            report = await store.append(commits)
            assert report.failure is None

        return add
