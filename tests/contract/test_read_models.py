"""The read-model contracts, written once and run against every adapter:
ReadModelStore (what the projector writes through) and ReadModelReader (what the API
reads through), in memory (`MemoryReadModels`) and on the test session's MongoDB-protocol
server (`MongoReadModelStore`, `MongoReadModelReader`).

The reader contract runs a third time on `IndexedListReader`: lists from the in-memory
run list index (`list_index.RunListIndex`) loaded with every run document written.

The last test walks random runs under every filter form on every adapter and requires
the same pages: the MongoDB queries `run_query` compiles and the index's walks mean what
`memory_store.accepts` says.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import BulkWriteError

from services.common.readmodels.history_chunks import HISTORY_HEAD
from services.common.readmodels.list_index import IndexedListReader, RunListIndex
from services.common.readmodels.memory_store import DuplicateDocument, MemoryReadModels, as_stored
from services.common.readmodels.mongo_reader import MongoReadModelReader
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.readmodels.reader import LIST_FIELDS, ReadModelReader
from services.common.readmodels.run_filter import BadPageToken, Cursor, RunFilter
from services.common.readmodels.search_keys import parse_search_keys, search_terms
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS, Document, ReadModelStore

T = datetime(2026, 3, 1, tzinfo=UTC)


def ms(n: int) -> datetime:
    return T + timedelta(milliseconds=n)


def run(
    run_id: str,
    workflow: str,
    start: int,
    end: int | None,
    status: str,
    user: str,
    *,
    keys: dict[str, str | None] | None = None,
    tags: tuple[str, ...] = (),
    internal: bool = False,
    display: str | None = None,
    root: str | None = None,
) -> Document:
    return {
        "_id": run_id,
        "run_id": run_id,
        "execution_id": f"x-{run_id}",
        "workflow_name": workflow,
        "display_name": display,
        "root_execution_id": root or f"x-{run_id}",
        "parent_execution_id": None,
        "deployment_name": None,
        "user_id": user,
        "internal": internal,
        "search_keys": keys or {},
        "search_terms": search_terms(keys),
        "workflow_tags": list(tags),
        "status": status,
        "start_time": ms(start),
        "end_time": None if end is None else ms(end),
        "total_duration_ms": None if end is None else end - start,
        "result": {"big": "x" * 100},
        "attempt": 1,
        "seq": 1,
        # The run's first history chunk (compressed bytes): point reads get it, list rows
        # must not carry it (test_list_rows_hold_the_list_fields_only).
        HISTORY_HEAD: {"first": 1, "last": 1, "count": 1, "body": b"x\x01" + run_id.encode()},
    }


RUNS_ = [
    run(
        "r1", "order", 1, 5, "COMPLETED", "alice", keys={"customer": "ACME Corp"}, tags=("billing",)
    ),
    run("r2", "order", 2, None, "RUNNING", "bob", keys={"customer": None}, internal=True),
    run("r3", "invoice", 2, 3, "FAILED", "alice", tags=("billing", "eu"), display="Big ORDER"),
    run("r4", "invoice", 4, None, "RUNNING", "alice", root="x-r1"),
]


class ReadModelsContract:
    """Subclasses provide `store` and `reader` over the same (empty) read models."""

    async def test_saved_documents_are_loaded_by_id(self, store: ReadModelStore) -> None:
        await store.setup()
        await store.setup()  # idempotent
        await store.save(EXECUTIONS, {"a": {"_id": "a", "seq": 1}, "b": {"_id": "b", "seq": 2}})
        assert await store.load(EXECUTIONS, ["a", "missing"]) == {"a": {"_id": "a", "seq": 1}}
        assert await store.load(EXECUTIONS, []) == {}
        assert set(await store.snapshot(EXECUTIONS)) == {"a", "b"}

    async def test_save_replaces_the_whole_document(self, store: ReadModelStore) -> None:
        await store.save(EXECUTIONS, {"a": {"_id": "a", "seq": 1, "old": True}})
        await store.save(EXECUTIONS, {"a": {"_id": "a", "seq": 2}})
        assert await store.load(EXECUTIONS, ["a"]) == {"a": {"_id": "a", "seq": 2}}

    async def test_stored_documents_are_copies(self, store: ReadModelStore) -> None:
        doc: Document = {"_id": "a", "position": [1, 0]}
        await store.save(EXECUTIONS, {"a": doc})
        doc["position"].append(9)  # the caller's dict changes after the write ...
        loaded = (await store.load(EXECUTIONS, ["a"]))["a"]
        loaded["position"].append(7)  # ... and so does what a read handed out
        assert (await store.load(EXECUTIONS, ["a"]))["a"] == {"_id": "a", "position": [1, 0]}

    async def test_values_come_back_as_bson_keeps_them(self, store: ReadModelStore) -> None:
        at = datetime(2026, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
        await store.save(
            HISTORY, {"c": {"_id": "c", "at": at, "pair": (1, 2), "body": b"\x00zlib", "n": None}}
        )
        got = (await store.load(HISTORY, ["c"]))["c"]
        assert got == {
            "_id": "c",
            "at": at.replace(microsecond=123_000),
            "pair": [1, 2],
            "body": b"\x00zlib",
            "n": None,
        }
        assert got["at"].tzinfo is not None and got["at"].utcoffset() == timedelta(0)

    async def test_insert_new_reports_the_documents_that_existed(
        self, store: ReadModelStore
    ) -> None:
        await store.save(RUNS, {"old": {"_id": "old", "v": 1}})
        existed = await store.insert_new(
            RUNS, {"old": {"_id": "old", "v": 2}, "new": {"_id": "new", "v": 3}}
        )
        assert existed == {"old"}
        assert await store.snapshot(RUNS) == {
            "old": {"_id": "old", "v": 1},
            "new": {"_id": "new", "v": 3},
        }
        assert await store.insert_new(RUNS, {}) == set()

    async def test_insert_of_an_existing_document_fails_and_keeps_it(
        self, store: ReadModelStore
    ) -> None:
        await store.insert(RUNS, {"old": {"_id": "old", "v": 1}})
        with pytest.raises((BulkWriteError, DuplicateDocument)):
            await store.insert(RUNS, {"old": {"_id": "old", "v": 2}, "new": {"_id": "new"}})
        assert await store.snapshot(RUNS) == {"old": {"_id": "old", "v": 1}, "new": {"_id": "new"}}

    async def test_drop_all_empties_every_read_model(self, store: ReadModelStore) -> None:
        for name in (RUNS, EXECUTIONS, HISTORY):
            await store.save(name, {"a": {"_id": "a"}})
        await store.drop_all()
        for name in (RUNS, EXECUTIONS, HISTORY):
            assert await store.snapshot(name) == {}

    # --- the reader --------------------------------------------------------------------

    async def test_get_reads_one_document(
        self, store: ReadModelStore, reader: ReadModelReader
    ) -> None:
        await store.save(RUNS, {"r1": RUNS_[0]})
        assert await reader.get(RUNS, "r1") == RUNS_[0]
        assert await reader.get(RUNS, "r9") is None
        assert await reader.load(RUNS, ["r1", "r9"]) == {"r1": RUNS_[0]}

    async def test_get_can_leave_fields_on_the_server(
        self, store: ReadModelStore, reader: ReadModelReader
    ) -> None:
        """Point reads that are not for a history leave the run row's head out."""
        await store.save(RUNS, {"r1": RUNS_[0]})
        got = await reader.get(RUNS, "r1", without=(HISTORY_HEAD,))
        assert got == {k: v for k, v in RUNS_[0].items() if k != HISTORY_HEAD}
        assert await reader.get(RUNS, "r1", without=()) == RUNS_[0]
        assert await reader.get(RUNS, "r9", without=(HISTORY_HEAD,)) is None

    @pytest.mark.parametrize(
        ("flt", "expected"),
        [
            (RunFilter(), ["r4", "r3", "r2", "r1"]),  # ties at the same start: by id
            (RunFilter(order="asc"), ["r1", "r2", "r3", "r4"]),
            (RunFilter(sort_by="end_time"), ["r1", "r3", "r4", "r2"]),  # open runs last
            (RunFilter(sort_by="end_time", order="asc"), ["r2", "r4", "r3", "r1"]),
            (RunFilter(workflow_name="order"), ["r2", "r1"]),
            (RunFilter(root_execution_id="x-r1"), ["r4", "r1"]),
            (RunFilter(user_id="alice", statuses=("RUNNING",)), ["r4"]),
            (RunFilter(statuses=("FAILED", "RUNNING")), ["r4", "r3", "r2"]),
            (RunFilter(statuses=("NO_SUCH",)), []),
            (RunFilter(search="ORDER"), ["r3", "r2", "r1"]),  # name, display name or id
            (RunFilter(search="x-r4"), ["r4"]),
            (RunFilter(search=".*"), []),  # a substring, not a pattern
            (RunFilter(include_internal=False), ["r4", "r3", "r1"]),
            (RunFilter(workflow_tags=("billing",)), ["r3", "r1"]),
            (RunFilter(workflow_tags=("billing", "eu")), ["r3"]),
            (RunFilter(search_keys=parse_search_keys(["customer"])), ["r2", "r1"]),
            (RunFilter(search_keys=parse_search_keys(["customer=="])), ["r2"]),
            (RunFilter(search_keys=parse_search_keys(["customer:acme"])), ["r1"]),
            (RunFilter(search_keys=parse_search_keys(["customer==:ACME Corp"])), ["r1"]),
            (RunFilter(search_keys=parse_search_keys(["customer==:acme corp"])), []),
            (RunFilter(start_time_after=ms(2), start_time_before=ms(2)), ["r3", "r2"]),
            (RunFilter(end_time_after=ms(4)), ["r1"]),  # never an open run
            (RunFilter(sort_by="end_time", end_time_before=ms(5)), ["r1", "r3"]),
        ],
    )
    async def test_list_runs_filters_and_sorts(
        self, store: ReadModelStore, reader: ReadModelReader, flt: RunFilter, expected: list[str]
    ) -> None:
        await store.save(RUNS, {r["_id"]: r for r in RUNS_})
        assert [r["_id"] for r in await reader.list_runs(flt, None, 100)] == expected

    async def test_list_rows_hold_the_list_fields_only(
        self, store: ReadModelStore, reader: ReadModelReader
    ) -> None:
        await store.save(RUNS, {r["_id"]: r for r in RUNS_})
        row = (await reader.list_runs(RunFilter(workflow_name="order"), None, 1))[0]
        assert row == {f: RUNS_[1][f] for f in LIST_FIELDS}
        assert HISTORY_HEAD not in row and HISTORY_HEAD not in LIST_FIELDS

    @pytest.mark.parametrize(
        ("flt", "after", "limit", "expected"),
        [
            (RunFilter(), None, 2, ["r4", "r3"]),
            (RunFilter(), Cursor(ms(2), "r3"), 10, ["r2", "r1"]),
            (RunFilter(order="asc"), Cursor(ms(2), "r2"), 1, ["r3"]),
            (RunFilter(sort_by="end_time"), Cursor(ms(3), "r3"), 10, ["r4", "r2"]),
            (RunFilter(sort_by="end_time"), Cursor(None, "r4"), 10, ["r2"]),
            (RunFilter(sort_by="end_time", order="asc"), Cursor(None, "r4"), 10, ["r3", "r1"]),
            (RunFilter(), None, 0, []),
        ],
    )
    async def test_list_runs_starts_after_a_cursor_and_stops_at_the_limit(
        self,
        store: ReadModelStore,
        reader: ReadModelReader,
        flt: RunFilter,
        after: Cursor | None,
        limit: int,
        expected: list[str],
    ) -> None:
        await store.save(RUNS, {r["_id"]: r for r in RUNS_})
        assert [r["_id"] for r in await reader.list_runs(flt, after, limit)] == expected

    async def test_an_open_run_cursor_under_start_time_is_refused(
        self, reader: ReadModelReader
    ) -> None:
        with pytest.raises(BadPageToken):
            await reader.list_runs(RunFilter(), Cursor(None, "r1"), 10)


class TestMemoryReadModels(ReadModelsContract):
    @pytest.fixture
    def models(self) -> MemoryReadModels:
        return MemoryReadModels()

    @pytest.fixture
    def store(self, models: MemoryReadModels) -> ReadModelStore:
        return models

    @pytest.fixture
    def reader(self, models: MemoryReadModels) -> ReadModelReader:
        return models


class IndexFedModels(MemoryReadModels):
    """The memory store, also putting every run document it writes into a run list index
    (as a snapshot loads the store's documents into it)."""

    def __init__(self, index: RunListIndex) -> None:
        super().__init__()
        self.index = index

    def _write(self, collection: str, docs: Mapping[str, Document]) -> None:
        super()._write(collection, docs)
        if collection == RUNS:
            # (The store's own tests write documents that are not runs.)
            for doc in docs.values():
                if "start_time" in doc:
                    self.index.put(as_stored(doc))

    async def drop_all(self) -> None:
        await super().drop_all()
        self.index.clear()
        self.index.ready = True


class TestIndexedListReader(ReadModelsContract):
    @pytest.fixture
    def models(self) -> IndexFedModels:
        index = RunListIndex()
        index.ready = True
        return IndexFedModels(index)

    @pytest.fixture
    def store(self, models: IndexFedModels) -> ReadModelStore:
        return models

    @pytest.fixture
    def reader(self, models: IndexFedModels) -> ReadModelReader:
        # A store that cannot list: every list must come from the index.
        return IndexedListReader(_NoLists(models), models.index)


class _NoLists(MemoryReadModels):
    def __init__(self, models: MemoryReadModels) -> None:
        super().__init__()
        self.data = models.data

    async def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        raise AssertionError("the index is ready: lists must not reach the store")


class TestMongoReadModels(ReadModelsContract):
    @pytest.fixture
    def store(self, db: Any) -> ReadModelStore:
        return MongoReadModelStore(db)

    @pytest.fixture
    def reader(self, db: Any) -> ReadModelReader:
        return MongoReadModelReader(db)


# --- the memory adapter means what the MongoDB queries mean -------------------------------


def random_runs(n: int, seed: int = 11) -> list[Document]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        start = rnd.randrange(0, 30)  # many ties
        end = start + rnd.randrange(0, 4) if rnd.random() < 0.6 else None
        keys: dict[str, str | None] = {}
        if rnd.random() < 0.7:
            keys["customer"] = rnd.choice(["ACME Corp", "acme-eu", "Globex", "", "x:y==z"])
        if rnd.random() < 0.4:
            keys["region"] = rnd.choice([None, "eu", "us"])
        out.append(
            run(
                f"run-{i:03d}",
                rnd.choice(["order", "invoice", "Nightly-Report"]),
                start,
                end,
                rnd.choice(["COMPLETED", "FAILED"]) if end is not None else "RUNNING",
                rnd.choice(["alice", "bob"]),
                keys=keys,
                tags=tuple(sorted(rnd.sample(["billing", "nightly", "eu"], rnd.randrange(0, 3)))),
                internal=rnd.random() < 0.2,
                display=rnd.choice([None, "Big ORDER run"]),
                root=rnd.choice(["root-1", None]),
            )
        )
    return out


FILTERS = [
    RunFilter(),
    RunFilter(workflow_name="order", statuses=("FAILED",)),
    RunFilter(root_execution_id="root-1", user_id="bob"),
    RunFilter(statuses=("FAILED", "RUNNING"), include_internal=False),
    RunFilter(search="order"),
    RunFilter(start_time_after=ms(10), start_time_before=ms(20)),
    RunFilter(end_time_after=ms(5)),
    RunFilter(search_keys=parse_search_keys(["customer:acme", "region"])),
    RunFilter(search_keys=parse_search_keys(["customer==:", "region=="])),
    RunFilter(workflow_tags=("billing", "eu")),
]


async def walk(reader: ReadModelReader, flt: RunFilter, size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    after: Cursor | None = None
    while True:
        rows = await reader.list_runs(flt, after, size)
        pages.append([r["_id"] for r in rows])
        if len(rows) < size:
            return pages
        last = rows[-1]
        after = Cursor(last[flt.sort_by], last["_id"])


async def test_every_adapter_pages_through_every_filter_alike(db: Any) -> None:
    rows = {r["_id"]: r for r in random_runs(60)}
    memory = MemoryReadModels()
    await memory.save(RUNS, rows)
    await MongoReadModelStore(db).save(RUNS, rows)
    mongo = MongoReadModelReader(db)
    index = RunListIndex()
    for doc in (await MongoReadModelStore(db).snapshot(RUNS)).values():
        index.put(doc)
    index.ready = True
    indexed = IndexedListReader(memory, index)
    compared = 0
    for base, sort_by, order in itertools.product(
        FILTERS, ("start_time", "end_time"), ("asc", "desc")
    ):
        flt = dataclasses.replace(base, sort_by=sort_by, order=order)
        expected = await walk(memory, flt, 7)
        assert await walk(mongo, flt, 7) == expected, flt
        assert await walk(indexed, flt, 7) == expected, flt
        compared += sum(len(p) for p in expected)
    assert compared > 300  # the filters do select runs
