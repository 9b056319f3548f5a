"""CommitLog in memory: for unit tests of the projector and the API's readers. Passes
the same contract suite as `MongoCommitLog` (tests/contract/test_commit_log.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from schemas.commits import Commit, commit_id
from schemas.events import EventType


class MemoryCommitLog:
    def __init__(self, commits: Iterable[Commit] = ()) -> None:
        self._by_id: dict[str, Commit] = {}
        self._run_locators: dict[str, str] = {}
        self.add(commits)

    def add(self, commits: Iterable[Commit]) -> None:
        """Store commits (what the engine's append does, locators included)."""
        for commit in commits:
            self._by_id.setdefault(commit.doc_id, commit)
            for e in commit.events:
                if e.type is EventType.WORKFLOW_EXECUTION_STARTED:
                    self._run_locators.setdefault(e.run_id, e.execution_id)

    async def get(self, execution_id: str, seq: int) -> Commit | None:
        return self._by_id.get(commit_id(execution_id, seq))

    async def read_after(
        self, execution_id: str, after_seq: int, limit: int | None = None
    ) -> list[Commit]:
        found: list[Commit] = []
        while limit is None or len(found) < limit:
            commit = await self.get(execution_id, after_seq + len(found) + 1)
            if commit is None:
                break
            found.append(commit)
        return found

    async def scan(self) -> AsyncIterator[Commit]:
        for doc_id in sorted(self._by_id):
            yield self._by_id[doc_id]

    async def count(self) -> int:
        return len(self._by_id)

    async def locate_run(self, run_id: str) -> str | None:
        return self._run_locators.get(run_id)
