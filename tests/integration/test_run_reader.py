"""History pages of the RunReader against the real MongoDB-protocol server: projected
chunks and sealed blocks (and histories without blocks, a crash between a block's chunks
and the block, a rebuild), commits the projector has not applied yet, chunks read before
their row, and the per-user view."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.api.access import OwnedRunReader
from services.api.run_reader import RunReader
from services.common.mongo_commit_log import MongoCommitLog
from services.common.readmodels.history_chunks import (
    HEAD_MAX_TEXT_CHARS,
    HISTORY_HEAD,
    event_json,
    head_docs,
    history_block_key,
    history_chunk_id,
    is_block,
    texts_of_lines,
)
from services.common.readmodels.mongo_reader import MongoReadModelReader
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.readmodels.run_filter import RunFilter
from services.common.readmodels.store import HISTORY, RUNS, Document
from services.engine.mongo_event_store import MongoEventStore
from services.projector.projector import Projector
from services.projector.rebuild import rebuild
from tests.support.workloads import Workload, fold_all, store_commits


def mongo_reader(db: Any, user_id: str | None = None) -> RunReader:
    """The API's reader over `db`: every run, or (with `user_id`) that user's."""
    models, commits = MongoReadModelReader(db), MongoCommitLog(db)
    if user_id is None:
        return RunReader(models, commits)
    return OwnedRunReader(models, commits, user_id)


Db = AsyncDatabase[dict[str, Any]]


def numbers(texts: list[str]) -> list[int]:
    return [json.loads(t)["event_number"] for t in texts]


async def pages(reader: RunReader, run_id: str, size: int) -> list[list[int]]:
    out: list[list[int]] = []
    after: int | None = 0
    while after is not None:
        page = await reader.run_history_page(run_id, after, size)
        assert page is not None
        out.append(numbers(page.events))
        after = page.next_after
    return out


async def test_pages_of_a_closed_run_walk_its_history_once(mongo_db: Db) -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 248)
    w.complete("a", result=1)
    await Projector(MongoReadModelStore(mongo_db)).apply(w.all_events())
    reader = mongo_reader(mongo_db)
    run_id = w.run_id("a")

    whole = await reader.run_history_page(run_id)
    assert whole is not None and whole.next_after is None
    assert numbers(whole.events) == list(range(1, 251))
    assert [json.loads(t) for t in whole.events] == [event_json(e) for e in w.all_events()]
    for size in (100, 37, 1, 250, 1000):
        walked = await pages(reader, run_id, size)
        assert [n for p in walked for n in p] == list(range(1, 251)), size
        assert all(len(p) == size for p in walked[:-1])
    beyond = await reader.run_history_page(run_id, 250, 10)
    assert beyond is not None and beyond.events == [] and beyond.next_after is None


async def test_pages_join_projected_chunks_and_newer_commits(mongo_db: Db) -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 119)
    await Projector(MongoReadModelStore(mongo_db)).apply(w.all_events())  # 120 projected
    w.signals("a", 90)
    await store_commits(mongo_db, w)  # the engine stored 210; the projector saw 120
    reader = mongo_reader(mongo_db)
    run_id = w.run_id("a")
    for size in (50, 120, 7):
        walked = await pages(reader, run_id, size)
        assert [n for p in walked for n in p] == list(range(1, 211)), size
    by_execution = await reader.execution_history_page("a", 100, 30)
    assert by_execution is not None and numbers(by_execution.events) == list(range(101, 131))
    assert by_execution.next_after == 130
    assert len(await MongoReadModelStore(mongo_db).snapshot(HISTORY)) == 1  # chunk 0: the head


async def test_an_execution_the_projector_never_saw_is_read_from_its_commits(mongo_db: Db) -> None:
    w = Workload()
    w.start("fresh")
    w.signal("fresh")
    w.reset("fresh", event_id=1)
    await store_commits(mongo_db, w)
    reader = mongo_reader(mongo_db)
    page = await reader.execution_history_page("fresh", 0, 2)
    assert page is not None and page.run["run_id"] == w.run_id("fresh")
    assert [json.loads(t)["type"] for t in page.events] == [
        "WORKFLOW_RUN_RESET",
        "WORKFLOW_EXECUTION_STARTED",
    ]
    assert page.next_after == 2
    execution = await reader.execution("fresh")
    assert execution is not None and execution["run_id"] == w.run_id("fresh")


async def test_a_chunk_read_before_its_row_was_written_is_read_again(mongo_db: Db) -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 109)
    events = w.all_events()
    store = MongoReadModelStore(mongo_db)
    await Projector(store).apply(events[:104])
    chunk_1 = history_chunk_id(w.run_id("a"), 101)
    stale = await store.load(HISTORY, [chunk_1])
    assert stale[chunk_1]["count"] == 4
    await Projector(store).apply(events[104:])
    reader = mongo_reader(mongo_db)
    row = await mongo_db[RUNS].find_one({"_id": w.run_id("a")})
    assert row is not None
    # What `run_history_page` does when the chunk it read with the row predates the row.
    lines = await reader._chunk_lines(row, 1, 110, stale)
    assert numbers(texts_of_lines(lines)) == list(range(1, 111))


async def test_heads_and_chunk_0_documents_read_alike_on_the_server(mongo_db: Db) -> None:
    """A start stores its first events in the run row (the head: a nested document with
    a binary body, which the server keeps as it is); list rows leave it on the server;
    a store written before heads (chunk 0 as a document), a run opened by a reset and a
    head grown past its bound read the same events, before and after the projector
    folds more onto them."""
    w = Workload()
    w.start("a")
    w.signals("a", 150)
    w.start("b")
    w.signals("b", 3)
    w.reset("b")
    w.start("big", input="z" * (HEAD_MAX_TEXT_CHARS + 10))
    w.start("old")
    w.signals("old", 5)
    events = w.all_events()
    await store_commits(mongo_db, w)
    store = MongoReadModelStore(mongo_db)
    await Projector(store).apply(events)
    runs = await store.snapshot(RUNS)
    history = await store.snapshot(HISTORY)
    assert runs == fold_all(events).changes()[1]  # heads come back byte for byte
    assert HISTORY_HEAD in runs[w.run_id("a")] and HISTORY_HEAD in runs[w.run_id("old")]
    for run_id in (w.run_id("b"), w.run_id("big")):
        assert HISTORY_HEAD not in runs[run_id]
        assert history_chunk_id(run_id, 1) in history
    listed = await MongoReadModelReader(mongo_db).list_runs(RunFilter(), None, 100)
    assert len(listed) == len(runs) and not any(HISTORY_HEAD in r for r in listed)
    # "old" as the code before heads wrote it.
    old_id = w.run_id("old")
    head = head_docs(runs[old_id])
    await mongo_db[HISTORY].insert_many(list(head.values()))
    await mongo_db[RUNS].update_one({"_id": old_id}, {"$unset": {HISTORY_HEAD: ""}})
    reader = mongo_reader(mongo_db)

    async def read_back() -> None:
        for execution_id in ("a", "b", "big", "old"):
            run_id = w.run_id(execution_id)
            want = [event_json(e) for e in w.all_events() if e.run_id == run_id]
            whole = await reader.run_history_page(run_id)
            assert whole is not None and [json.loads(t) for t in whole.events] == want
            walked = await pages(reader, run_id, 2)
            assert [n for p in walked for n in p] == list(range(1, len(want) + 1))

    await read_back()
    more, stored = len(events), len(w.commits)
    w.signals("old", 3)
    w.signals("a", 2)
    report = await MongoEventStore(mongo_db).append(w.commits[stored:])
    assert report.failure is None
    await Projector(store, MongoCommitLog(mongo_db)).apply(w.all_events()[more:])
    after = await store.snapshot(RUNS)
    assert HISTORY_HEAD not in after[old_id]  # folded onto its chunk 0 document
    assert (await store.snapshot(HISTORY))[history_chunk_id(old_id, 1)]["count"] == 9
    await read_back()


async def test_another_users_history_is_not_shown(mongo_db: Db) -> None:
    w = Workload()
    w.start("a", user_id="alice")
    await Projector(MongoReadModelStore(mongo_db)).apply(w.all_events())
    run_id = w.run_id("a")
    assert (
        await OwnedRunReader(
            MongoReadModelReader(mongo_db), MongoCommitLog(mongo_db), "alice"
        ).run_history_page(run_id, 0, 10)
        is not None
    )
    assert (
        await OwnedRunReader(
            MongoReadModelReader(mongo_db), MongoCommitLog(mongo_db), "bob"
        ).run_history_page(run_id, 0, 10)
        is None
    )
    assert (
        await OwnedRunReader(
            MongoReadModelReader(mongo_db), MongoCommitLog(mongo_db), "bob"
        ).execution_history_page("a")
        is None
    )
    assert await mongo_reader(mongo_db, "bob").run(run_id) is None
    assert (await mongo_db[RUNS].find_one({"_id": run_id})) is not None


async def test_an_unprojected_execution_is_read_whole_however_many_commits_it_has(
    mongo_db: Db,
) -> None:
    # Fewer, as many and more commits than the reader's first round (4) reads at once.
    w = Workload()
    for execution_id, signals in (("two", 1), ("four", 3), ("nine", 8)):
        w.start(execution_id)
        w.signals(execution_id, signals)
    w.complete("nine", result=9)
    await store_commits(mongo_db, w)
    reader = mongo_reader(mongo_db)
    for execution_id, events in (("two", 2), ("four", 4), ("nine", 10)):
        run = await reader.execution(execution_id)
        assert run is not None and run["event_count"] == events, (execution_id, run)
        by_run = await reader.run(w.run_id(execution_id))
        assert by_run == run
    nine = await reader.execution("nine")
    assert nine is not None and nine["status"] == "COMPLETED"
    assert await reader.execution("never-started") is None


class _DiesBeforeBlocks(MongoReadModelStore):
    """The projector's process dies (an exception) when it first writes a history block:
    the block's chunks are stored, the block, the run row and the pointer are not."""

    died = False

    async def insert_new(self, collection: str, docs: Mapping[str, Document]) -> set[str]:
        if not self.died and any(is_block(i) for i in docs):
            self.died = True
            raise ConnectionError("killed between the chunks and the block")
        return await super().insert_new(collection, docs)


async def test_a_long_history_reads_the_same_through_blocks_chunks_a_crash_and_a_rebuild(
    mongo_db: Db,
) -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 2_399)
    w.complete("a", result=1)
    events = w.all_events()
    expected = [event_json(e) for e in events]
    run_id = w.run_id("a")
    await store_commits(mongo_db, w)
    commits = MongoCommitLog(mongo_db)
    store = _DiesBeforeBlocks(mongo_db)
    await store.setup()
    projector = Projector(store, commits)
    for k in range(0, len(events), 300):  # batches of 300: the second holds event 1,000
        try:
            await projector.apply(events[k : k + 300])
        except ConnectionError:
            stored = await store.snapshot(HISTORY)
            assert history_chunk_id(run_id, 1000) in stored
            assert not [i for i in stored if is_block(i)]
            projector = Projector(store, commits)  # restarted: the batch comes again
            await projector.apply(events[k : k + 300])
    assert store.died
    live = await store.snapshot(HISTORY)
    assert sorted(i for i in live if is_block(i)) == [
        history_block_key(run_id, 0),
        history_block_key(run_id, 1),
    ]
    assert live == fold_all(events).changes()[0]  # as one uninterrupted fold
    assert history_chunk_id(run_id, 1) not in live  # chunk 0 is the row's head
    reader = mongo_reader(mongo_db)

    async def read_back() -> None:
        whole = await reader.run_history_page(run_id)
        assert whole is not None and [json.loads(t) for t in whole.events] == expected
        by_execution = await reader.execution_history("a")
        assert by_execution is not None and by_execution[1] == expected
        for size in (1000, 100, 777):
            walked = await pages(reader, run_id, size)
            assert [n for p in walked for n in p] == list(range(1, len(events) + 1)), size

    await read_back()
    # Histories written before blocks existed: chunks only.
    await mongo_db[HISTORY].delete_many({"_id": {"$in": [i for i in live if is_block(i)]}})
    await read_back()
    # The rebuild seals the blocks again, equal to the live ones.
    report = await rebuild(MongoReadModelStore(mongo_db), commits)
    assert report.history_chunks == len(live)
    assert await store.snapshot(HISTORY) == live
    await read_back()
