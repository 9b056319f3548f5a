"""The port the projector writes through: documents addressed by `_id`."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

Document = dict[str, Any]

RUNS = "runs"
EXECUTIONS = "executions"
HISTORY = "history"


class ReadModelStore(Protocol):
    async def setup(self) -> None:
        """Create collections and the list indexes; idempotent."""

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        """The documents that exist among `ids`."""

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        """Write whole documents (insert or replace) by `_id`."""

    async def drop_all(self) -> None:
        """Remove every read model (before a rebuild)."""
