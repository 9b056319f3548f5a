"""The port the API reads the read models through: `_id` reads and the run list.

Adapters: `MongoReadModelReader` (mongo_reader.py) and `MemoryReadModels`
(memory_store.py), both held to `tests/contract/test_read_models.py`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from services.common.readmodels.run_filter import Cursor, RunFilter
from services.common.readmodels.store import Document

LIST_FIELDS = (
    "_id",
    "run_id",
    "execution_id",
    "workflow_name",
    "root_execution_id",
    "parent_execution_id",
    "deployment_name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "total_duration_ms",
    "attempt",
)
"""The fields of a list row. The rest of a run document (result_json, failure_json, search keys) is
only needed by point reads, so lists leave it on the server."""


class ReadModelReader(Protocol):
    async def get(
        self, collection: str, doc_id: str, *, without: Collection[str] = ()
    ) -> Document | None:
        """One document by `_id`, but its fields named in `without` (left on the server:
        a run row's `history_head` for reads that are not for its history); None if there
        is none."""

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        """The documents that exist among `ids`, by `_id`."""

    async def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        """Up to `limit` runs matching `flt` in its sort order, strictly after `after`;
        each row holds LIST_FIELDS only. BadPageToken if `after` fits no segment of the
        filter's sort."""
