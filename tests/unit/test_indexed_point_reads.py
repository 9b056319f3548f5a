"""Point reads answered from the API's run list index (services/api/run_reader.py,
`_indexed_run` / `_indexed_execution`): whatever prefix of the events the index has folded
(cut anywhere, also between two events of one commit), a point read shows the run as of
the newest stored commit, as the store's path does, and reads the read models not at all
while the index holds the run. Runs the index does not hold go the store's way."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Collection
from typing import Any

import pytest

from schemas.events import Event
from services.api.access import OwnedRunReader
from services.api.answered import AnsweredRecently
from services.api.run_reader import RunReader
from services.api.shapes import execution_from_run
from services.common.memory_commit_log import MemoryCommitLog
from services.common.readmodels import list_index
from services.common.readmodels.list_index import (
    IndexedListReader,
    RunListIndex,
    search_keys_from_terms,
)
from services.common.readmodels.memory_store import MemoryReadModels
from services.common.readmodels.run_filter import Cursor, RunFilter
from services.common.readmodels.search_keys import search_terms
from services.common.readmodels.store import Document
from tests.support.workloads import Workload, fold_all, mixed_workload


class CountingModels:
    """A ReadModelReader over MemoryReadModels that counts the point reads it serves."""

    def __init__(self, models: MemoryReadModels) -> None:
        self.models = models
        self.reads = 0

    async def get(
        self, collection: str, doc_id: str, *, without: Collection[str] = ()
    ) -> Document | None:
        self.reads += 1
        return await self.models.get(collection, doc_id, without=without)

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        self.reads += len(ids)
        return await self.models.load(collection, ids)

    async def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        return await self.models.list_runs(flt, after, limit)


def shown(run: Document | None) -> dict[str, Any] | None:
    """What the point routes answer for `run` (search keys included)."""
    if run is None:
        return None
    return execution_from_run(run, include_search_keys=True).model_dump(mode="json")


async def projected(events: list[Event]) -> MemoryReadModels:
    """The read models as the projector writes them for `events`."""
    models = MemoryReadModels()
    history, runs, executions = fold_all(events).changes()
    for collection, docs in (("history", history), ("runs", runs), ("executions", executions)):
        await models.save(collection, docs)
    return models


def readers(
    w: Workload, folded: list[Event], projected_models: MemoryReadModels
) -> tuple[RunReader, RunReader, CountingModels]:
    """(a reader over the index holding `folded`, the store's reader, the index reader's
    counting models); both over every commit of `w`."""
    index = RunListIndex()
    for event in folded:
        index.apply(event)
    index.ready = True
    counting = CountingModels(projected_models)
    commits = MemoryCommitLog(w.commits)
    indexed = RunReader(IndexedListReader(counting, index), commits)
    return indexed, RunReader(projected_models, commits), counting


@pytest.mark.parametrize("seed", range(3))
async def test_a_point_read_from_any_prefix_of_the_events_shows_the_newest_commit(
    seed: int,
) -> None:
    w = mixed_workload()
    events = w.all_events()
    rnd = random.Random(seed)
    # The projector's writes as of some commit (what the store's path relies on).
    commit_ends = [0, *itertools.accumulate(len(c.events) for c in w.commits)]
    for cut in range(len(events) + 1):  # every cut, also between events of one commit
        store_has = events[: rnd.choice(commit_ends)]
        await _reads_show_every_commit(w, events[:cut], store_has)


async def _reads_show_every_commit(
    w: Workload, folded: list[Event], store_has: list[Event]
) -> None:
    events = w.all_events()
    indexed, store, counting = readers(w, folded, await projected(store_has))
    truth = fold_all(events)
    for run_id, run in truth.runs.items():
        assert shown(await indexed.run(run_id)) == shown(run), run_id
        assert shown(await store.run(run_id)) == shown(run), run_id
    for execution_id, pointer in truth.executions.items():
        latest = truth.runs[pointer["latest_run_id"]]
        assert shown(await indexed.execution(execution_id)) == shown(latest), execution_id
    if len(folded) == len(events):
        # Every run is in the index: the read models were never read.
        assert counting.reads == 0
    # Ids the index does not hold go the store's way (which finds nothing).
    assert await indexed.run("no-such-run") is None
    assert await indexed.execution("no-such-execution") is None


async def test_reads_from_a_full_index_need_at_most_one_round_trip_to_the_commits() -> None:
    w = mixed_workload()
    events = w.all_events()
    indexed, _, counting = readers(w, events, MemoryReadModels())
    commits: list[tuple[str, int]] = []
    assert isinstance(indexed.commits, MemoryCommitLog)
    real_get = indexed.commits.get

    async def get(execution_id: str, seq: int) -> Any:
        commits.append((execution_id, seq))
        return await real_get(execution_id, seq)

    indexed.commits.get = get  # type: ignore[method-assign]
    failed = w.run_id("b")
    assert (await indexed.run(failed) or {}).get("status") == "FAILED"
    assert commits == []  # a closed run that did not complete is final: no read
    completed = w.run_id("a")
    run = await indexed.run(completed)
    assert run is not None and execution_from_run(run).result == {"ok": True}
    assert commits == []  # the feed folded its completion: the index keeps the result
    commits.clear()
    assert (await indexed.execution("g") or {}).get("status") == "RUNNING"
    # The row's commit and the probe after it (both by _id, sent together).
    seq = max(e.seq for e in w.events["g"])
    assert commits == [("g", seq), ("g", seq + 1)]
    assert counting.reads == 0


async def test_a_run_opened_after_the_index_row_is_read_the_stores_way() -> None:
    w = Workload()
    w.start("x")
    w.complete("x", result=1)
    folded = w.all_events()
    w.start("x")  # a second run of the execution the index has not seen yet
    indexed, _, counting = readers(w, folded, MemoryReadModels())
    run = await indexed.execution("x")
    assert run is not None and run["run_id"] == w.run_id("x") and run["status"] == "RUNNING"
    assert counting.reads > 0  # (the pointer, missing: then folded from the commits)


async def test_a_run_of_another_user_answers_none_from_the_index_too() -> None:
    w = Workload()
    w.start("mine", user_id="alice")
    w.start("theirs", user_id="bob")
    w.complete("theirs", result=2)
    index = RunListIndex()
    for event in w.all_events():
        index.apply(event)
    index.ready = True
    commits = MemoryCommitLog(w.commits)
    alice = OwnedRunReader(IndexedListReader(MemoryReadModels(), index), commits, "alice")
    assert (await alice.execution("mine") or {}).get("user_id") == "alice"
    assert await alice.execution("theirs") is None
    assert await alice.run(w.run_id("theirs")) is None
    assert await alice.run(w.run_id("mine")) is not None


async def test_an_index_not_ready_is_not_used() -> None:
    w = Workload()
    w.start("x")
    index = RunListIndex()
    for event in w.all_events():
        index.apply(event)
    counting = CountingModels(await projected(w.all_events()))
    reader = RunReader(IndexedListReader(counting, index), MemoryCommitLog(w.commits))
    assert await reader.execution("x") is not None
    assert counting.reads > 0


@pytest.mark.parametrize(
    "keys", [None, {}, {"order": "O-17"}, {"note": None, "a-b": "x=y:z", "c_1": ""}]
)
def test_search_keys_come_back_from_their_terms(keys: dict[str, str | None] | None) -> None:
    assert search_keys_from_terms(search_terms(keys)) == (keys or {})


async def test_a_completed_run_whose_result_the_index_lacks_takes_it_from_its_commit() -> None:
    w = Workload()
    w.start("loaded")
    w.complete("loaded", result={"n": 1})
    w.start("big")
    w.complete("big", result="x" * 5000)  # longer than a result the index keeps
    index = RunListIndex()
    with index.loading():  # rows from a store snapshot carry no result
        index.put(fold_all(w.all_events()[:2]).runs[w.run_id("loaded")])
    for event in w.all_events()[2:]:
        index.apply(event)
    index.ready = True
    log = MemoryCommitLog(w.commits)
    reads: list[tuple[str, int]] = []
    real_get = log.get

    async def get(execution_id: str, seq: int) -> Any:
        reads.append((execution_id, seq))
        return await real_get(execution_id, seq)

    log.get = get  # type: ignore[method-assign]
    reader = RunReader(IndexedListReader(MemoryReadModels(), index), log)
    for execution_id, result in (("loaded", {"n": 1}), ("big", "x" * 5000)):
        reads.clear()
        run = await reader.run(w.run_id(execution_id))
        assert run is not None and execution_from_run(run).result == result
        assert reads == [(execution_id, 2)]  # the completing commit, nothing else


def test_the_index_keeps_the_newest_results_within_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(list_index, "_RESULTS_CHARS", 100)
    w = Workload()
    for n in range(5):
        w.start(f"r{n}")
        w.complete(f"r{n}", result="y" * 30)  # 32 characters of JSON each
    index = RunListIndex()
    for event in w.all_events() + w.all_events():  # (re-delivered: counted once)
        index.apply(event)
    kept = ["result_json" in (index.run_document(w.run_id(f"r{n}")) or {}) for n in range(5)]
    assert kept == [False, False, True, True, True]


async def test_the_stores_path_shows_every_commit_when_the_projection_ends_mid_commit() -> None:
    # A projector batch can end between two events of one commit: its row and pointer then
    # say that commit's seq while lacking the commit's later events.
    w = mixed_workload()
    events = w.all_events()
    truth = fold_all(events)
    for cut in range(len(events) + 1):
        store = RunReader(await projected(events[:cut]), MemoryCommitLog(w.commits))
        for run_id, run in truth.runs.items():
            assert shown(await store.run(run_id)) == shown(run), (cut, run_id)
            history = await store.run_history(run_id)
            assert history is not None
            assert [e["event_id"] for e in history[1]] == [
                e.event_id for e in events if e.run_id == run_id
            ], (cut, run_id)
        for execution_id, pointer in truth.executions.items():
            latest = truth.runs[pointer["latest_run_id"]]
            assert shown(await store.execution(execution_id)) == shown(latest), (cut, execution_id)


def _index_of(events: list[Event]) -> RunListIndex:
    index = RunListIndex()
    for event in events:
        index.apply(event)
    index.ready = True
    return index


async def test_a_read_right_after_an_answer_waits_for_the_index_instead_of_the_store() -> None:
    # With direct replies the API answers a start before its events reach the index: a
    # point read of that execution waits for the index to fold them, rather than reading
    # the store's read models.
    w = Workload()
    w.start("old")
    before = w.all_events()
    w.start("new")
    later = w.all_events()[len(before) :]
    index = _index_of(before)
    counting = CountingModels(await projected(w.all_events()))
    answered = AnsweredRecently(wait_s=5.0)
    answered.note("new", w.run_id("new"))
    reader = RunReader(
        IndexedListReader(counting, index), MemoryCommitLog(w.commits), answered=answered
    )

    async def fold_later() -> None:
        await asyncio.sleep(0.02)
        for event in later:
            index.apply(event)

    folding = asyncio.create_task(fold_later())
    run = await reader.execution("new")
    await folding
    assert run is not None and run["run_id"] == w.run_id("new") and run["status"] == "RUNNING"
    assert counting.reads == 0
    assert (await reader.run(w.run_id("new")) or {}).get("execution_id") == "new"
    assert counting.reads == 0


async def test_a_read_of_an_id_not_answered_here_does_not_wait_and_a_wait_is_bounded() -> None:
    w = Workload()
    w.start("x")
    counting = CountingModels(await projected(w.all_events()))
    answered = AnsweredRecently(wait_s=0.05)
    reader = RunReader(
        IndexedListReader(counting, _index_of([])), MemoryCommitLog(w.commits), answered=answered
    )
    # Never answered here: the store's way at once (it holds the run).
    assert (await reader.execution("x") or {}).get("run_id") == w.run_id("x")
    reads = counting.reads
    assert reads > 0
    # Answered, but the index never folds it: after the wait, the store's way still answers.
    answered.note("x", w.run_id("x"))
    assert (await reader.execution("x") or {}).get("run_id") == w.run_id("x")
    assert counting.reads > reads


def test_answered_ids_expire_and_stay_within_their_bound() -> None:
    answered = AnsweredRecently(wait_s=0.1, keep_s=60.0, size=2)
    answered.note("e1", "r1")
    answered.note("e2", None)
    assert answered.expects("e1") is False  # pushed out: 2 ids at most
    assert [answered.expects(k) for k in ("r1", "e2", "unknown")] == [True, True, False]
    expired = AnsweredRecently(wait_s=0.1, keep_s=0.0)
    expired.note("e", "r")
    assert not expired.expects("e")
    never = AnsweredRecently(wait_s=0.0)
    never.note("e", "r")
    assert not never.expects("e")
