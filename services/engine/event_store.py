"""The port the engine writes through: an append-only store of per-execution commits.

`EventStore` is what the engine needs. Every adapter builds its `append_round` from the
two appends of `Appends` (`append_round_with`), which the contract suite
(tests/contract/test_event_store.py) checks on each adapter as well. Commits of one
execution are appended with contiguous seqs from 1; the engine never makes a gap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from schemas.commits import Commit


class AppendFailure(Enum):
    DUPLICATE_COMMAND = "duplicate_command"
    """The command id is already stored: the command was applied before."""
    CONFLICT = "conflict"
    """Another writer already stored this `(execution_id, seq)`: reload and decide again
    (reported also when the command id is stored too: the reload then finds it)."""


@dataclass(frozen=True, slots=True)
class AppendReport:
    """How far an ordered append got: `inserted` commits went in, then maybe one failure."""

    inserted: int
    failure: AppendFailure | None = None


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What `append_round` did: the positions of the first commits refused, the commits
    it went on to append (those of executions with no refused first commit), and how far
    that append got."""

    refused: set[int]
    appended: list[Commit]
    report: AppendReport


class EventStore(Protocol):
    async def setup(self) -> None:
        """Create collections and indexes; idempotent."""

    async def latest(self, execution_ids: Collection[str]) -> dict[str, Commit]:
        """The newest commit of each execution that has one (others are absent)."""

    async def append_round(self, firsts: Sequence[Commit], rest: Sequence[Commit]) -> RoundReport:
        """`append_first(firsts)`, then `append` of the commits of `rest` whose execution
        had no first commit refused, in one call. See `append_round_with`."""

    async def get(self, execution_id: str, seq: int) -> Commit | None:
        """One commit by its position."""

    async def find_by_command(self, command_id: str) -> Commit | None:
        """The commit a command produced, if any."""

    async def find_by_commands(
        self, command_ids: Collection[str], streams: Mapping[str, int] | None = None
    ) -> dict[str, Commit]:
        """The commits these commands produced, by command id (absent if none).

        `streams` (execution id → its newest seq) says where they would be, if anywhere:
        an adapter whose command-id index cannot serve reads may look there instead.
        """

    def read_stream(self, execution_id: str, after_seq: int = 0) -> AsyncIterator[Commit]:
        """The execution's commits after `after_seq` (all of them if it is 0 or less),
        in order."""
        ...  # pragma: no cover


class Appends(Protocol):
    """The two appends every adapter builds `append_round` from."""

    async def append(self, commits: Sequence[Commit]) -> AppendReport:
        """Insert commits in order, stopping at the first that cannot go in.

        A commit whose `seq` is taken (`CONFLICT`) or whose `command_id` is stored
        already (`DUPLICATE_COMMAND`) is not written; the report says which, and nothing
        after it is attempted.
        """

    async def append_first(self, commits: Sequence[Commit]) -> set[int]:
        """Insert the first commits (seq 1) of executions believed new, independently of
        each other; return the positions of those that did not go in.

        A commit is refused when its execution already has a seq 1 or its command id is
        stored; the others are written whatever happens to those. This lets the engine
        start executions without reading first: a refused start is decided again against
        the stored state. A commit that is not a first one is an error: nothing is
        written then.
        """


class EventStoreAdapter(EventStore, Appends, Protocol):
    """What each adapter offers: the port and the two appends it is built from."""


async def append_round_with(
    store: Appends, firsts: Sequence[Commit], rest: Sequence[Commit]
) -> RoundReport:
    """`EventStore.append_round` in terms of `append_first` and `append`."""
    refused = await store.append_first(firsts)
    refused_executions = {firsts[p].execution_id for p in refused}
    appended = [c for c in rest if c.execution_id not in refused_executions]
    return RoundReport(refused, appended, await store.append(appended))
