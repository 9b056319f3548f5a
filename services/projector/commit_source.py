"""The port through which the projector reads the event store: to fill a gap in the
events it was handed, and to rebuild the read models from scratch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from schemas.commits import Commit


class CommitSource(Protocol):
    async def read(self, execution_id: str, seqs: Sequence[int]) -> list[Commit]:
        """The commits of `execution_id` at `seqs` that exist, in seq order (`_id` reads)."""

    def scan(self) -> AsyncIterator[Commit]:
        """Every commit, each execution's commits in seq order (for a rebuild)."""

    async def count(self) -> int:
        """About how many commits `scan` yields (for progress output)."""
