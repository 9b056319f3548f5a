"""The read models in memory: ReadModelStore and ReadModelReader over dicts, for unit
tests of the projector and the API's readers. Held to the same contract suite as the
MongoDB adapters (tests/contract/test_read_models.py), so it stores what MongoDB would
hand back: copies (a caller's later change to a dict does not reach the store), tuples
as lists, datetimes as UTC at millisecond precision (BSON dates). `writes` counts bulk
writes per collection, for tests that check how a batch is written.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from services.common.clock import to_milliseconds
from services.common.readmodels.reader import LIST_FIELDS
from services.common.readmodels.run_filter import Cursor, RunFilter, aware
from services.common.readmodels.store import READ_MODELS, Document

_OLDEST = datetime.min.replace(tzinfo=UTC)


class DuplicateDocument(ValueError):
    """`insert` of an `_id` that exists (MongoDB raises a BulkWriteError)."""


class MemoryReadModels:
    def __init__(self) -> None:
        self.data: dict[str, dict[str, Document]] = {name: {} for name in READ_MODELS}
        self.writes: list[tuple[str, int]] = []

    # --- ReadModelStore -------------------------------------------------------------

    async def setup(self) -> None:
        return None

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        held = self.data[collection]
        return {i: copy.deepcopy(held[i]) for i in ids if i in held}

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        self._write(collection, docs)

    async def insert(self, collection: str, docs: Mapping[str, Document]) -> None:
        existing = set(docs) & set(self.data[collection])
        self._write(collection, {i: d for i, d in docs.items() if i not in existing})
        if existing:
            raise DuplicateDocument(f"{collection}: already stored: {sorted(existing)}")

    async def insert_new(self, collection: str, docs: Mapping[str, Document]) -> set[str]:
        existing = set(docs) & set(self.data[collection])
        self._write(collection, {i: d for i, d in docs.items() if i not in existing})
        return existing

    def _write(self, collection: str, docs: Mapping[str, Document]) -> None:
        """One bulk write (none for no documents)."""
        if docs:
            self.writes.append((collection, len(docs)))
            self.data[collection].update({i: as_stored(d) for i, d in docs.items()})

    async def drop_all(self) -> None:
        for held in self.data.values():
            held.clear()

    async def snapshot(self, collection: str) -> dict[str, Document]:
        return copy.deepcopy(self.data[collection])

    # --- ReadModelReader ------------------------------------------------------------

    async def get(
        self, collection: str, doc_id: str, *, without: Collection[str] = ()
    ) -> Document | None:
        doc = self.data[collection].get(doc_id)
        if doc is None:
            return None
        return copy.deepcopy({k: v for k, v in doc.items() if k not in without})

    async def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        flt.segments_from(after)  # a cursor that fits no segment is refused, as in MongoDB
        rows = sorted(
            (r for r in self.data["runs"].values() if accepts(flt, r)),
            key=lambda r: _sort_key(r.get(flt.sort_by), r["_id"]),
            reverse=flt.order == "desc",
        )
        if after is not None:
            mark = _sort_key(after.value, after.run_id)
            if flt.order == "desc":
                rows = [r for r in rows if _sort_key(r.get(flt.sort_by), r["_id"]) < mark]
            else:
                rows = [r for r in rows if _sort_key(r.get(flt.sort_by), r["_id"]) > mark]
        return [{f: copy.deepcopy(r[f]) for f in LIST_FIELDS if f in r} for r in rows[:limit]]


def accepts(flt: RunFilter, run: Document) -> bool:
    """What `flt` means for one run document (run_query.py says it to MongoDB)."""
    if any(run.get(k) != v for k, v in flt.equality().items()):
        return False
    if len(set(flt.statuses)) > 1 and run.get("status") not in flt.statuses:
        return False
    terms = run.get("search_terms") or []
    if not all(sk.matches(terms) for sk in flt.search_keys):
        return False
    if not all(tag in (run.get("workflow_tags") or []) for tag in flt.workflow_tags):
        return False
    if not flt.include_internal and run.get("internal") is True:
        return False
    if flt.search:
        needle = flt.search.lower()
        fields = ("workflow_name", "display_name", "execution_id")
        if not any(needle in str(run.get(f) or "").lower() for f in fields):
            return False
    for field, low, high in (
        ("start_time", flt.start_time_after, flt.start_time_before),
        ("end_time", flt.end_time_after, flt.end_time_before),
    ):
        value = run.get(field)
        if low is None and high is None:
            continue
        if not isinstance(value, datetime):
            return False  # range operators never match null
        if low is not None and aware(value) < aware(low):
            return False
        if high is not None and aware(value) > aware(high):
            return False
    return True


def _sort_key(value: datetime | None, run_id: str) -> tuple[bool, datetime, str]:
    # Null below every date, as MongoDB orders them.
    return (value is not None, aware(value) if value is not None else _OLDEST, run_id)


def as_stored(value: Any) -> Any:
    """`value` as a BSON round trip returns it (copied; lists; UTC milliseconds)."""
    if isinstance(value, dict):
        return {k: as_stored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_stored(v) for v in value]
    if isinstance(value, datetime):
        return to_milliseconds(aware(value))
    return copy.deepcopy(value)
