"""The port the projector writes through: documents addressed by `_id`."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

Document = dict[str, Any]

RUNS = "runs"
EXECUTIONS = "executions"
HISTORY = "history"
READ_MODELS = (RUNS, EXECUTIONS, HISTORY)


class ReadModelStore(Protocol):
    async def setup(self) -> None:
        """Create collections and the declared indexes; idempotent."""

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        """The documents that exist among `ids` (each an `_id` point read)."""

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        """Write whole documents (insert or replace) by `_id`, in one bulk write."""

    async def insert(self, collection: str, docs: Mapping[str, Document]) -> None:
        """Insert documents known not to exist yet (a rebuild into empty collections)."""

    async def insert_new(self, collection: str, docs: Mapping[str, Document]) -> set[str]:
        """Insert documents believed not to exist yet; returns the `_id`s that did exist
        (those are left as they were; every other document is inserted)."""

    async def drop_all(self) -> None:
        """Remove every read model (before a rebuild)."""

    async def snapshot(self, collection: str) -> dict[str, Document]:
        """Every document of a read model by `_id` (tests and rebuild checks; not a hot path)."""
