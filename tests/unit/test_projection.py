"""The read-model projection: pure folds of real engine events into run rows, execution
pointers and history chunks, and the Projector's batching, idempotency and gap filling
(on an in-memory store).

Events come from running commands through the engine's `decide`/`fold` (see `Workload`),
so they are the events the engine would store and publish.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.commands import (
    CancelExecution,
    Command,
    CompleteExecution,
    CompletePayload,
    ContinueAsNew,
    ContinueAsNewPayload,
    FailExecution,
    FailPayload,
    ReasonPayload,
    ResetExecution,
    ResetPayload,
    SignalExecution,
    SignalPayload,
    StartWorkflow,
    StartWorkflowPayload,
    TerminateExecution,
)
from schemas.commits import Commit
from schemas.common import Failure
from schemas.events import Event
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
from services.engine.domain import Context, ExecutionState, decide, fold, successor_commands
from services.projector.projector import Projector

T0 = 1_700_000_000_000_000_000
MS = 1_000_000

# --- a workload built by the real domain ----------------------------------------------------


class Workload:
    """Executions grown by `decide` + `fold`, as the engine grows them; keeps every commit."""

    def __init__(self) -> None:
        self.states: dict[str, ExecutionState] = {}
        self.events: dict[str, list[Event]] = {}
        self.commits: list[Commit] = []
        self._n = itertools.count(1)

    def run(self, cmd: Command) -> Commit:
        n = next(self._n)
        state = self.states.get(cmd.execution_id)
        history = tuple(
            e for e in self.events.get(cmd.execution_id, []) if state and e.run_id == state.run_id
        )
        ctx = Context(
            now_ns=T0 + n * 7 * MS + n,  # sub-millisecond parts on purpose
            new_run_id=f"run-{cmd.command_id}",
            new_execution_id=f"next-{cmd.command_id}",
            successor_run_id=f"succ-{cmd.command_id}",
            history=history,
        )
        events = decide(state, cmd, ctx)
        state = fold(events, state)
        assert state is not None
        self.states[cmd.execution_id] = state
        self.events.setdefault(cmd.execution_id, []).extend(events)
        commit = Commit(
            execution_id=cmd.execution_id,
            seq=events[0].seq,
            command_id=cmd.command_id,
            command_type=cmd.type,
            run_id=events[-1].run_id,
            events=events,
            committed_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
            state=state.model_dump(mode="json"),
        )
        self.commits.append(commit)
        for follow_up in successor_commands(events, ctx, state):
            self.run(follow_up)
        return commit

    def run_id(self, execution_id: str) -> str:
        return self.states[execution_id].run_id

    def all_events(self) -> list[Event]:
        return [e for c in self.commits for e in c.events]

    # command builders ----------------------------------------------------------------

    def _env(self, execution_id: str, user: str | None = "alice") -> dict[str, Any]:
        return {
            "command_id": f"c{next(self._n)}-{execution_id}",
            "execution_id": execution_id,
            "issued_at": datetime(2024, 1, 1, tzinfo=UTC),
            "user_id": user,
        }

    def start(self, execution_id: str, workflow: str = "order", **payload: Any) -> Commit:
        user = payload.pop("user_id", "alice")
        return self.run(
            StartWorkflow(
                **self._env(execution_id, user),
                payload=StartWorkflowPayload(workflow_name=workflow, **payload),
            )
        )

    def complete(self, execution_id: str, result: Any = None) -> Commit:
        return self.run(
            CompleteExecution(
                **self._env(execution_id, None),
                payload=CompletePayload(run_id=self.run_id(execution_id), result=result),
            )
        )

    def fail(self, execution_id: str) -> Commit:
        return self.run(
            FailExecution(
                **self._env(execution_id, None),
                payload=FailPayload(
                    run_id=self.run_id(execution_id),
                    failure=Failure(message="boom"),
                    retryable=False,
                ),
            )
        )

    def cancel(self, execution_id: str) -> Commit:
        return self.run(
            CancelExecution(**self._env(execution_id), payload=ReasonPayload(reason="stop"))
        )

    def terminate(self, execution_id: str) -> Commit:
        return self.run(TerminateExecution(**self._env(execution_id), payload=ReasonPayload()))

    def signal(self, execution_id: str, name: str = "poke") -> Commit:
        return self.run(
            SignalExecution(**self._env(execution_id), payload=SignalPayload(name=name, input=1))
        )

    def signals(self, execution_id: str, count: int) -> None:
        """`count` signals in a row (named "poke")."""
        for _ in range(count):
            self.signal(execution_id)

    def reset(self, execution_id: str, event_id: int = 1) -> Commit:
        return self.run(
            ResetExecution(**self._env(execution_id), payload=ResetPayload(event_id=event_id))
        )

    def continue_as_new(self, execution_id: str) -> Commit:
        return self.run(
            ContinueAsNew(
                **self._env(execution_id, None),
                payload=ContinueAsNewPayload(run_id=self.run_id(execution_id), input={"n": 2}),
            )
        )


def mixed_workload() -> Workload:
    """Every kind of run life: running, completed, failed, canceled, terminated, reset,
    continued-as-new, signalled, children, a re-started execution id."""
    w = Workload()
    w.start("a", display_name="Nightly A", deployment_name="prod", user_id="bob")
    w.signal("a")
    w.complete("a", result={"ok": True})
    w.start("b", internal=True)
    w.fail("b")
    w.start("c", parent_execution_id="a", root_execution_id="a")
    w.cancel("c")
    w.start("d", search_keys={"order": "O-17", "note": None}, workflow_tags=["billing"])
    w.signal("d")
    w.reset("d")
    w.start("e", search_keys={"customer": "ACME"}, workflow_tags=["nightly", "eu", "nightly"])
    w.continue_as_new("e")
    w.start("f")
    w.terminate("f")
    w.start("f")  # a second run under the same execution id
    w.start("g")
    return w


def fold_all(events: Sequence[Event], docs: ReadModelDocs | None = None) -> ReadModelDocs:
    return project(events, docs or ReadModelDocs())


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


def test_completed_run_has_end_time_duration_and_result() -> None:
    w = Workload()
    w.start("a")
    w.signal("a")
    w.complete("a", result=[1, 2])
    run = fold_all(w.all_events()).runs[w.run_id("a")]
    assert run["status"] == "COMPLETED"
    assert run["result"] == [1, 2]
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
    assert set(ids) == set(docs.history)
    events = events_of_chunks(docs.history[i] for i in ids)
    assert sorted(events) == list(range(1, count + 1))
    assert events[1]["type"] == "WORKFLOW_EXECUTION_STARTED"
    assert events[count]["type"] == "WORKFLOW_EXECUTION_SIGNALED"


def test_history_chunks_hold_event_json_text_as_lines_of_a_flat_document() -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 4)
    events = w.all_events()
    docs = fold_all(events)
    [chunk] = docs.history.values()
    assert set(chunk) == {"_id", "run_id", "first", "last", "count", "body"}
    assert (chunk["first"], chunk["last"], chunk["count"]) == (1, 5, 5)
    assert chunk["body"].split("\n") == [e.model_dump_json() for e in events]
    assert events_of_chunks([chunk]) == {e.event_number: event_json(e) for e in events}
    # Written compressed; read back (and appended to) the same.
    [stored] = docs.changes()[0].values()
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
