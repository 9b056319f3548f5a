"""The read-model projection: pure folds of real engine events into run rows, execution
pointers and history chunks, and the Projector's batching, idempotency and gap filling
(on an in-memory store).

Events come from running commands through the engine's `decide`/`fold` (see `Workload`),
so they are the events the engine would store and publish.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

import pytest

from schemas.commits import Commit
from services.common.memory_commit_log import MemoryCommitLog
from services.common.readmodels.history_chunks import (
    HISTORY_CHUNK,
    apply_to_history,
    chunk_body_text,
    chunk_event_texts,
    event_json,
    events_of_chunks,
    history_chunk_ids,
)
from services.common.readmodels.memory_store import MemoryReadModels
from services.common.readmodels.projection import ReadModelDocs, apply_to_run, project
from services.common.readmodels.search_keys import search_terms
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS
from services.projector.projector import Projector
from tests.support.workloads import Workload, all_chunks, fold_all, mixed_workload

# --- run rows ---------------------------------------------------------------------------------


def test_started_run_is_a_running_row_with_every_list_field() -> None:
    w = Workload()
    w.start("a", display_name="Nightly", deployment_name="prod", user_id="bob", internal=True)
    run = fold_all(w.all_events()).runs[w.run_id("a")]
    assert run["status"] == "RUNNING"
    assert run["end_time"] is None and run["total_duration_ms"] is None
    assert run["execution_id"] == "a" and run["root_execution_id"] == "a"
    assert run["display_name"] == "Nightly" and run["deployment_name"] == "prod"
    assert run["user_id"] == "bob" and run["internal"] is True
    assert run["start_time"].microsecond % 1000 == 0  # what a BSON date keeps
    assert run["seq"] == 1 and run["event_count"] == 1


def test_a_failed_run_keeps_its_failure_as_json_text() -> None:
    w = Workload()
    w.start("a")
    w.fail("a")
    run = fold_all(w.all_events()).runs[w.run_id("a")]
    failure = w.commits[-1].events[-1].attributes.failure  # type: ignore[attr-defined]
    assert run["status"] == "FAILED" and run["result_json"] is None
    assert json.loads(run["failure_json"]) == failure.model_dump(mode="json")


def test_completed_run_has_end_time_duration_and_result() -> None:
    w = Workload()
    w.start("a")
    w.signal("a")
    w.complete("a", result=[1, 2])
    run = fold_all(w.all_events()).runs[w.run_id("a")]
    assert run["status"] == "COMPLETED"
    assert json.loads(run["result_json"]) == [1, 2]
    duration = run["end_time"] - run["start_time"]
    assert run["total_duration_ms"] == duration // timedelta(milliseconds=1)
    assert run["event_count"] == 3 and run["seq"] == 3


@pytest.mark.parametrize(
    ("close", "status"),
    [("fail", "FAILED"), ("cancel", "CANCELED"), ("terminate", "TERMINATED")],
)
def test_closing_events_set_status_and_end_time(close: str, status: str) -> None:
    w = Workload()
    w.start("a")
    getattr(w, close)("a")
    run = fold_all(w.all_events()).runs[w.run_id("a")]
    assert run["status"] == status and run["end_time"] is not None


def test_reset_closes_the_old_run_and_opens_a_new_one_that_the_pointer_names() -> None:
    w = Workload()
    w.start("a")
    old = w.run_id("a")
    w.signal("a")
    w.reset("a", event_id=2)
    new = w.run_id("a")
    docs = fold_all(w.all_events())
    assert docs.runs[old]["status"] == "TERMINATED"
    assert docs.runs[new]["status"] == "RUNNING"
    assert docs.executions["a"]["latest_run_id"] == new
    # The new run's history starts with WORKFLOW_RUN_RESET, which the row does not show
    # but counts.
    assert docs.runs[new]["event_count"] == len([e for e in w.all_events() if e.run_id == new])


def test_continue_as_new_hands_over_to_a_new_execution() -> None:
    w = Workload()
    w.start("a", parent_execution_id="p", root_execution_id="p")
    w.continue_as_new("a")
    docs = fold_all(w.all_events())
    old = docs.runs[next(r for r in docs.runs if docs.runs[r]["execution_id"] == "a")]
    successor = [r for r in docs.runs.values() if r["execution_id"] != "a"]
    assert old["status"] == "CONTINUED_AS_NEW"
    assert len(successor) == 1
    assert successor[0]["root_execution_id"] == "p"
    assert successor[0]["parent_execution_id"] == "p"


def test_event_of_a_run_not_started_yet_is_ignored_by_the_row() -> None:
    w = Workload()
    w.start("a")
    w.signal("a")
    assert apply_to_run(None, w.all_events()[1]) is None


# --- idempotency and order --------------------------------------------------------------------


def test_projecting_everything_twice_changes_nothing_the_second_time() -> None:
    events = mixed_workload().all_events()
    once = fold_all(events)
    again = ReadModelDocs(
        runs=dict(once.runs), executions=dict(once.executions), history=dict(once.history)
    )
    project(events, again)
    assert not (again.changed_runs or again.changed_executions or again.changed_history)
    assert (again.runs, again.executions, again.history) == (
        once.runs,
        once.executions,
        once.history,
    )


def test_an_old_event_redelivered_after_newer_ones_moves_nothing_backwards() -> None:
    events = mixed_workload().all_events()
    once = fold_all(events)
    for k in range(len(events)):
        replay = fold_all(events)
        project([events[k], *events[: k + 1]], replay)
        assert (replay.runs, replay.executions, replay.history) == (
            once.runs,
            once.executions,
            once.history,
        ), f"re-delivering event {k} changed the read models"


def test_any_split_into_batches_gives_the_same_documents() -> None:
    events = mixed_workload().all_events()
    whole = fold_all(events)
    for cut in range(1, len(events)):
        docs = fold_all(events[:cut])
        project(events[cut:], docs)
        assert (docs.runs, docs.executions, docs.history) == (
            whole.runs,
            whole.executions,
            whole.history,
        )


# --- history chunks ---------------------------------------------------------------------------


def test_history_is_chunked_by_event_number_and_reads_back_in_order() -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 2 * HISTORY_CHUNK + 10)
    run_id = w.run_id("a")
    docs = fold_all(w.all_events())
    count = docs.runs[run_id]["event_count"]
    assert count == 2 * HISTORY_CHUNK + 11
    ids = history_chunk_ids(run_id, count)
    assert ids == [f"{run_id}:000000", f"{run_id}:000001", f"{run_id}:000002"]
    assert set(ids[1:]) == set(docs.history)  # chunk 0 is the row's head
    held = all_chunks(docs.history, docs.runs)
    events = events_of_chunks(held[i] for i in ids)
    assert sorted(events) == list(range(1, count + 1))
    assert events[1]["type"] == "WORKFLOW_EXECUTION_STARTED"
    assert events[count]["type"] == "WORKFLOW_EXECUTION_SIGNALED"


def test_history_chunks_hold_event_json_text_as_lines_of_a_flat_document() -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 4)
    events = w.all_events()
    docs = fold_all(events)
    [chunk] = all_chunks(docs.history, docs.runs).values()
    assert set(chunk) == {"_id", "run_id", "first", "last", "count", "body"}
    assert (chunk["first"], chunk["last"], chunk["count"]) == (1, 5, 5)
    assert chunk["body"].split("\n") == [e.model_dump_json() for e in events]
    assert events_of_chunks([chunk]) == {e.event_number: event_json(e) for e in events}
    # Written compressed; read back (and appended to) the same.
    [stored] = all_chunks(*docs.changes()[:2]).values()
    assert isinstance(stored["body"], bytes) and len(stored["body"]) < len(chunk["body"])
    assert chunk_body_text(stored) == chunk["body"]
    assert events_of_chunks([stored]) == events_of_chunks([chunk])
    assert apply_to_history(stored, events[2]) is stored
    w.signal("a")
    sixth = w.all_events()[-1]
    assert events_of_chunks([apply_to_history(stored, sixth)])[6] == event_json(sixth)


def test_history_event_arriving_out_of_order_finds_its_place() -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 5)
    events = w.all_events()
    chunk = None
    for e in [events[0], events[3], events[1], events[5], events[3], events[2], events[4]]:
        chunk = apply_to_history(chunk, e)
    assert chunk is not None
    assert [n for n, _ in chunk_event_texts(chunk)] == [1, 2, 3, 4, 5, 6]
    assert apply_to_history(chunk, events[2]) is chunk  # already there: unchanged
    holes = apply_to_history(apply_to_history(None, events[0]), events[2])
    assert (holes["first"], holes["last"], holes["count"]) == (1, 3, 2)
    assert [n for n, _ in chunk_event_texts(holes)] == [1, 3]


# --- search keys and workflow tags -------------------------------------------------------------


def test_search_terms_encode_each_filter_form() -> None:
    assert search_terms({"order": "O-17", "note": None, "who": "Ann Lee"}) == [
        "set:note",
        "null:note",
        "set:order",
        "eq:order=O-17",
        "fold:order=o-17",
        "set:who",
        "eq:who=Ann Lee",
        "fold:who=ann lee",
    ]
    assert search_terms(None) == search_terms({}) == []


def test_run_rows_carry_search_keys_and_tags_to_reset_and_continued_runs() -> None:
    w = mixed_workload()
    docs = fold_all(w.all_events())
    rows = list(docs.runs.values())
    d_runs = [r for r in rows if r["execution_id"] == "d"]
    assert len(d_runs) == 2  # the reset opened a second run
    for row in d_runs:
        assert row["search_keys"] == {"order": "O-17", "note": None}
        assert row["search_terms"] == search_terms(row["search_keys"])
        assert row["workflow_tags"] == ["billing"]
    successor = [r for r in rows if r["execution_id"] == w.states["e"].successor_execution_id]
    assert len(successor) == 1
    for row in [docs.runs[w.run_id("e")], *successor]:
        assert row["search_keys"] == {"customer": "ACME"}
        assert row["workflow_tags"] == ["eu", "nightly"]  # sorted, once each
    assert all(
        r["search_terms"] == [] and r["workflow_tags"] == []
        for r in rows
        if r["execution_id"] in ("a", "b", "c", "f", "g")
    )


def test_history_chunk_ids_of_an_empty_run_are_none() -> None:
    assert history_chunk_ids("r", 0) == []
    assert history_chunk_ids("r", HISTORY_CHUNK) == ["r:000000"]
    assert history_chunk_ids("r", HISTORY_CHUNK + 1) == ["r:000000", "r:000001"]


# --- the Projector on an in-memory store ------------------------------------------------------


class MemoryCommits(MemoryCommitLog):
    """The in-memory commit log, counting the reads of runs of commits."""

    def __init__(self, commits: Sequence[Commit]) -> None:
        super().__init__(commits)
        self.reads = 0

    async def read_after(
        self, execution_id: str, after_seq: int, limit: int | None = None
    ) -> list[Commit]:
        self.reads += 1
        return await super().read_after(execution_id, after_seq, limit)


async def test_projector_writes_each_batch_with_one_bulk_write_per_collection() -> None:
    store = MemoryReadModels()
    await Projector(store).apply(mixed_workload().all_events())
    assert [c for c, _ in store.writes] == [HISTORY, RUNS, EXECUTIONS]


async def test_projector_applied_twice_equals_applied_once() -> None:
    events = mixed_workload().all_events()
    once, twice = MemoryReadModels(), MemoryReadModels()
    await Projector(once).apply(events)
    await Projector(twice).apply(events)
    writes = len(twice.writes)
    await Projector(twice).apply(events)
    assert twice.data == once.data
    assert len(twice.writes) == writes, "a re-delivered batch must write nothing"


async def test_projector_fills_a_gap_from_the_event_store() -> None:
    w = mixed_workload()
    events = w.all_events()
    full = MemoryReadModels()
    await Projector(full).apply(events)
    # Lose every event of commit 2 of execution "a" and deliver the rest.
    lost = {(e.execution_id, e.seq) for e in events if e.execution_id == "a" and e.seq == 2}
    commits = MemoryCommits(w.commits)
    gappy = MemoryReadModels()
    await Projector(gappy, commits).apply(
        [e for e in events if (e.execution_id, e.seq) not in lost]
    )
    assert gappy.data == full.data
    assert commits.reads == 1


async def test_projector_fills_a_gap_across_batches_and_after_reordering() -> None:
    w = mixed_workload()
    events = w.all_events()
    full = MemoryReadModels()
    await Projector(full).apply(events)
    store = MemoryReadModels()
    projector = Projector(store, MemoryCommits(w.commits))
    later = [e for e in events if e.seq >= 2]
    earlier = [e for e in events if e.seq < 2]
    await projector.apply(later)  # every execution's first commit missing: filled
    await projector.apply(earlier)  # then re-delivered late: no-ops
    assert store.data == full.data
