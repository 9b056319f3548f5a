"""EventStore in memory: for unit tests of the engine; passes the same contract suite
as the MongoDB adapter (tests/contract/test_event_store.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence

from schemas.commits import Commit
from services.engine.event_store import (
    AppendFailure,
    AppendReport,
    RoundReport,
    append_round_with,
)


class MemoryEventStore:
    def __init__(self) -> None:
        self._streams: dict[str, list[Commit]] = {}
        self._by_command: dict[str, Commit] = {}

    async def setup(self) -> None:
        return None

    async def latest(self, execution_ids: Collection[str]) -> dict[str, Commit]:
        return {e: self._streams[e][-1] for e in execution_ids if self._streams.get(e)}

    async def append(self, commits: Sequence[Commit]) -> AppendReport:
        for done, commit in enumerate(commits):
            stream = self._streams.setdefault(commit.execution_id, [])
            # A taken seq first, as the MongoDB adapter tells them apart.
            if commit.seq <= len(stream):
                return AppendReport(inserted=done, failure=AppendFailure.CONFLICT)
            if commit.command_id in self._by_command:
                return AppendReport(inserted=done, failure=AppendFailure.DUPLICATE_COMMAND)
            if commit.seq != len(stream) + 1:
                raise ValueError(
                    f"gap in {commit.execution_id}: seq {commit.seq} after {len(stream)}"
                )
            stream.append(commit)
            self._by_command[commit.command_id] = commit
        return AppendReport(inserted=len(commits))

    async def append_first(self, commits: Sequence[Commit]) -> set[int]:
        if later := [c.doc_id for c in commits if c.seq != 1]:
            raise ValueError(f"append_first takes first commits only, not {later}")
        refused: set[int] = set()
        for position, commit in enumerate(commits):
            if commit.command_id in self._by_command or self._streams.get(commit.execution_id):
                refused.add(position)
                continue
            self._streams[commit.execution_id] = [commit]
            self._by_command[commit.command_id] = commit
        return refused

    async def append_round(self, firsts: Sequence[Commit], rest: Sequence[Commit]) -> RoundReport:
        return await append_round_with(self, firsts, rest)

    async def get(self, execution_id: str, seq: int) -> Commit | None:
        stream = self._streams.get(execution_id, [])
        return stream[seq - 1] if 1 <= seq <= len(stream) else None

    async def find_by_command(self, command_id: str) -> Commit | None:
        return self._by_command.get(command_id)

    async def find_by_commands(
        self, command_ids: Collection[str], streams: Mapping[str, int] | None = None
    ) -> dict[str, Commit]:
        return {c: self._by_command[c] for c in command_ids if c in self._by_command}

    async def read_stream(self, execution_id: str, after_seq: int = 0) -> AsyncIterator[Commit]:
        for commit in list(self._streams.get(execution_id, []))[max(after_seq, 0) :]:
            yield commit
