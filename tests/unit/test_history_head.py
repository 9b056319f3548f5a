"""A run's first history chunk in its run row (the head, `history_head`): a start writes a
row and a pointer and no history document; a head outgrowing its bound moves out to the
chunk 0 document for good; runs opened by a reset, and stores written before heads
existed, keep chunk 0 as a document. Whatever the batching, memory, crash or layout, the
documents equal one fold and every history reads back as the event store holds it.
In memory; on FerretDB: tests/integration/test_run_reader.py."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Collection, Mapping

import pytest

from schemas.commands import SignalExecution, SignalPayload
from schemas.events import Event, EventType
from services.api.run_reader import RunReader
from services.api.shapes import history_body
from services.common.memory_commit_log import MemoryCommitLog
from services.common.readmodels import projection
from services.common.readmodels.history_chunks import (
    HISTORY_CHUNK,
    HISTORY_HEAD,
    chunk_body_text,
    event_json,
    events_of_chunks,
    head_chunk,
    history_chunk_key,
)
from services.common.readmodels.list_index import RunListIndex
from services.common.readmodels.memory_store import MemoryReadModels
from services.common.readmodels.run_filter import RunFilter
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS, Document
from services.common.settings import TimersSettings
from services.projector.projector import Projector
from services.projector.rebuild import rebuild
from services.timers.schedule_runner import ScheduleRunner
from services.timers.stats import TimerStats
from tests.support.workloads import Workload, all_chunks, fold_all, mixed_workload


def expected(events: list[Event]) -> dict[str, dict[str, Document]]:
    history, runs, pointers = fold_all(events).changes()
    return {HISTORY: history, RUNS: runs, EXECUTIONS: pointers}


def runs_of(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e.run_id, []).append(e)
    return out


async def assert_histories_read_back(models: MemoryReadModels, w: Workload) -> None:
    """Every run's whole history (and its pages of 100) through the RunReader equals the
    event store's events of that run."""
    reader = RunReader(models, MemoryCommitLog(w.commits))
    for run_id, events in runs_of(w.all_events()).items():
        if not any(e.type is EventType.WORKFLOW_EXECUTION_STARTED for e in events):
            continue  # (a run without a start has no row to read)
        want = [event_json(e) for e in events]
        page = await reader.run_history_page(run_id)
        assert page is not None, run_id
        assert [json.loads(t) for t in page.events] == want, run_id
        got: list[Document] = []
        after: int | None = 0
        while after is not None:
            part = await reader.run_history_page(run_id, after, HISTORY_CHUNK)
            assert part is not None
            got += [json.loads(t) for t in part.events]
            after = part.next_after
        assert got == want, run_id


def long_signals(w: Workload, execution_id: str, count: int, size: int = 0) -> None:
    for _ in range(count):
        payload = SignalPayload(name="s", input="x" * size if size else 1)
        w.run(SignalExecution(**w._env(execution_id), payload=payload))


# --- the fold ---------------------------------------------------------------------------------


def test_a_start_is_a_row_holding_its_events_and_a_pointer_no_history_document() -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 3)
    events = w.all_events()
    history, runs, pointers = fold_all(events).changes()
    assert history == {} and len(runs) == 1 and len(pointers) == 1
    [row] = runs.values()
    head = row[HISTORY_HEAD]
    assert set(head) == {"first", "last", "count", "body"}
    assert (head["first"], head["last"], head["count"]) == (1, 4, 4)
    assert isinstance(head["body"], bytes)  # compressed as a chunk is
    chunk = head_chunk(row)
    assert chunk is not None and chunk["_id"] == history_chunk_key(w.run_id("a"), 0)
    assert chunk_body_text(chunk).split("\n") == [e.model_dump_json() for e in events]


def test_the_head_stays_in_the_row_when_the_run_grows_past_it() -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 2 * HISTORY_CHUNK)
    docs = fold_all(w.all_events())
    run_id = w.run_id("a")
    assert sorted(docs.history) == [history_chunk_key(run_id, 1), history_chunk_key(run_id, 2)]
    assert docs.runs[run_id][HISTORY_HEAD]["count"] == HISTORY_CHUNK
    held = events_of_chunks(all_chunks(docs.history, docs.runs).values())
    assert sorted(held) == list(range(1, 2 * HISTORY_CHUNK + 2))


def test_a_run_opened_by_a_reset_keeps_chunk_0_as_a_document() -> None:
    w = Workload()
    w.start("a")
    w.signal("a")
    w.reset("a")
    docs = fold_all(w.all_events())
    run_id = w.run_id("a")
    first = next(e for e in w.all_events() if e.run_id == run_id)
    assert first.type is EventType.WORKFLOW_RUN_RESET  # no row when its first event comes
    assert HISTORY_HEAD not in docs.runs[run_id]
    assert history_chunk_key(run_id, 0) in docs.history


async def test_list_rows_never_carry_the_head() -> None:
    w = mixed_workload()
    docs = fold_all(w.all_events())
    models = MemoryReadModels()
    await Projector(models).apply(w.all_events())
    assert any(HISTORY_HEAD in r for r in models.data[RUNS].values())
    listed = await models.list_runs(RunFilter(), None, 100)
    assert len(listed) == len(docs.runs)
    assert not any(HISTORY_HEAD in r for r in listed)
    index = RunListIndex()  # the API's run list index folds the rows the same way
    for e in w.all_events():
        index.apply(e)
    for run_id in docs.runs:
        assert HISTORY_HEAD not in (index.run_document(run_id) or {})


@pytest.fixture
def small_heads(monkeypatch: pytest.MonkeyPatch) -> int:
    """Heads of at most ~6 small events, so tests see heads move out."""
    bound = 3000
    monkeypatch.setattr(projection, "HEAD_MAX_TEXT_CHARS", bound)
    return bound


def test_a_head_past_its_bound_moves_out_for_good(small_heads: int) -> None:
    w = Workload()
    w.start("a")
    long_signals(w, "a", 30)
    events = w.all_events()
    run_id = w.run_id("a")
    zero = history_chunk_key(run_id, 0)
    sizes = [len(e.model_dump_json()) + 1 for e in events]
    fits = max(k for k in range(1, len(events)) if sum(sizes[:k]) - 1 <= small_heads)
    docs = fold_all(events[:fits])
    assert HISTORY_HEAD in docs.runs[run_id] and zero not in docs.history
    docs = fold_all(events[fits : fits + 1], docs)
    assert HISTORY_HEAD not in docs.runs[run_id] and zero in docs.history
    assert docs.history[zero]["count"] == fits + 1
    # For good, and the same documents as any other batching gives.
    fold_all(events[fits + 1 :], docs)
    assert HISTORY_HEAD not in docs.runs[run_id]
    assert docs.changes() == fold_all(events).changes()


def test_one_event_larger_than_the_bound_puts_chunk_0_in_a_document(small_heads: int) -> None:
    w = Workload()
    w.start("a", input="y" * (small_heads + 10))
    docs = fold_all(w.all_events())
    assert HISTORY_HEAD not in docs.runs[w.run_id("a")]
    assert list(docs.history) == [history_chunk_key(w.run_id("a"), 0)]


# --- the projector ------------------------------------------------------------------------------


def workload() -> Workload:
    w = mixed_workload()
    w.start("long")
    long_signals(w, "long", 2 * HISTORY_CHUNK + 30, size=40)
    w.start("short")
    long_signals(w, "short", 3)
    w.reset("short")
    long_signals(w, "short", 2)
    return w


@pytest.mark.parametrize("bound", ["default", "small"])
async def test_any_batching_memory_and_redelivery_gives_one_fold(
    bound: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if bound == "small":
        monkeypatch.setattr(projection, "HEAD_MAX_TEXT_CHARS", 3000)
    w = workload()
    events = w.all_events()
    want = expected(events)
    assert any(HISTORY_HEAD in r for r in want[RUNS].values())
    if bound == "small":
        assert any(HISTORY_HEAD not in r and "run-c" in i for i, r in want[RUNS].items())
    rnd = random.Random(11)
    for _ in range(12):
        store = MemoryReadModels()
        projector = Projector(store, MemoryCommitLog(w.commits))
        k = 0
        while k < len(events):
            step = rnd.choice((1, 2, 5, 17, 60))
            batch = events[k : k + step]
            if rnd.random() < 0.3:
                batch = events[max(0, k - rnd.randrange(1, 30)) : k] + batch
            if rnd.random() < 0.3:
                projector.forget()
            await projector.apply(batch)
            k += step
        assert store.data == want
    await assert_histories_read_back(store, w)


class _Crashing(MemoryReadModels):
    """Dies (an exception) on its `crash_at`-th write with documents; writes before it
    happened."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at
        self.calls = 0

    def _tick(self, docs: Mapping[str, Document]) -> None:
        if docs:
            self.calls += 1
            if self.calls == self.crash_at:
                raise ConnectionError("killed between two writes")

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        self._tick(docs)
        await super().save(collection, docs)

    async def insert_new(self, collection: str, docs: Mapping[str, Document]) -> set[str]:
        self._tick(docs)
        return await super().insert_new(collection, docs)


@pytest.mark.parametrize("bound", ["default", "small"])
async def test_a_crash_at_any_write_reads_correctly_and_completes_on_redelivery(
    bound: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector killed at each of its writes in turn: what is stored then still
    reads every history as the event store has it (the head and the row are one document;
    a chunk 0 document written before the row that drops the head is not read while the
    row has it), and a restarted projector given the batch again ends at one fold."""
    if bound == "small":
        monkeypatch.setattr(projection, "HEAD_MAX_TEXT_CHARS", 3000)
    w = workload()
    events = w.all_events()
    want = expected(events)
    steps = [0, 3, 9, 40, 41, 120, 300, len(events)]
    batches = [events[a:b] for a, b in itertools.pairwise(steps)]
    crash_at = 1
    while True:
        store = _Crashing(crash_at)
        projector = Projector(store, MemoryCommitLog(w.commits))
        crashed_in: int | None = None
        for n, batch in enumerate(batches):
            try:
                await projector.apply(batch)
            except ConnectionError:
                crashed_in = n
                break
        if crashed_in is None:
            assert store.data == want
            break
        await assert_histories_read_back(store, w)
        restarted = Projector(store, MemoryCommitLog(w.commits))
        for batch in batches[crashed_in:]:
            await restarted.apply(batch)
        assert store.data == want, crash_at
        crash_at += 1
    assert crash_at > 10


# --- stores written before heads existed ------------------------------------------------------


def without_heads(models: MemoryReadModels) -> None:
    """Rewrite a store as the code before heads wrote it: chunk 0 in its document."""
    runs = models.data[RUNS]
    models.data[HISTORY].update(all_chunks({}, runs))
    for run_id, row in list(runs.items()):
        runs[run_id] = {k: v for k, v in row.items() if k != HISTORY_HEAD}


async def test_a_store_written_before_heads_reads_and_keeps_folding_the_old_way() -> None:
    w = workload()
    events = w.all_events()
    cut = len(events) // 2
    models = MemoryReadModels()
    await Projector(models).apply(events[:cut])
    without_heads(models)
    old_runs = set(models.data[RUNS])
    # Read correctly as it is (chunk 0 read as a document).
    reader = RunReader(models, MemoryCommitLog(w.commits))
    for run_id in old_runs:
        page = await reader.run_history_page(run_id)
        assert page is not None
        want = [event_json(e) for e in w.all_events() if e.run_id == run_id]
        assert [json.loads(t) for t in page.events] == want
    # The projector folds onto the old rows (read back: a restart), never adding a head to
    # them; new runs get heads.
    projector = Projector(models)
    for k in range(cut, len(events), 7):
        await projector.apply(events[k : k + 7])
    for run_id in old_runs:
        assert HISTORY_HEAD not in models.data[RUNS][run_id]
        assert history_chunk_key(run_id, 0) in models.data[HISTORY]
    whole = fold_all(events).changes()
    assert all_chunks(models.data[HISTORY], models.data[RUNS]) == all_chunks(whole[0], whole[1])
    await assert_histories_read_back(models, w)


def _grown_run() -> tuple[Workload, int]:
    """Execution "a": started with a few signals (its first `first` events, the first
    batch), then enough more signals for a small head to move out."""
    w = Workload()
    w.start("a")
    long_signals(w, "a", 2)
    first = len(w.all_events())
    long_signals(w, "a", 20)
    return w, first


@pytest.mark.parametrize("again", [1, 2, 100], ids=["one by one", "pairs", "whole batch"])
async def test_a_crash_after_a_head_moved_out_before_its_row_was_written(
    small_heads: int, again: int
) -> None:
    """The batch that moves a head out writes chunk 0's document, then dies before the row
    (which still holds the head). Reads take the head; the re-delivered batch, in any
    cut, finds the document, folds onto it and ends at one fold."""
    w, first = _grown_run()
    events = w.all_events()
    run_id = w.run_id("a")
    store = _Crashing(crash_at=4)  # 1, 2: row and pointer inserted; 3: chunk 0; 4: the row
    await Projector(store).apply(events[:first])
    assert HISTORY_HEAD in store.data[RUNS][run_id]
    with pytest.raises(ConnectionError):
        await Projector(store).apply(events[first:])
    assert history_chunk_key(run_id, 0) in store.data[HISTORY]
    assert HISTORY_HEAD in store.data[RUNS][run_id]
    await assert_histories_read_back(store, w)
    restarted = Projector(store)
    for k in range(first, len(events), again):
        await restarted.apply(events[k : k + again])
        await assert_histories_read_back(store, w)
    assert store.data == expected(events)


class _KilledAfterRowReplace(MemoryReadModels):
    """Dies (an exception) right after it replaces run rows, once armed."""

    armed = False

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        await super().save(collection, docs)
        if self.armed and collection == RUNS and docs:
            raise ConnectionError("killed after the row was replaced")


@pytest.mark.parametrize("remembered", [True, False], ids=["remembered", "read back"])
async def test_a_refused_insert_writes_nothing_more_of_its_execution_in_that_pass(
    small_heads: int, remembered: bool
) -> None:
    """A projector from before heads inserted chunk 0 (event 1 only) and died before the
    row; this version's fresh start then puts a head in the row beside that stale
    document (it reads nothing). When the head moves out, chunk 0's insert is refused:
    had the row been replaced in that pass (without its head), a kill right after would
    leave the stale document as the only chunk 0, and reads would fail ("lack events").
    Nothing more of the execution is written in that pass; the careful one merges the
    document first, then replaces the row."""
    w, first = _grown_run()
    events = w.all_events()
    run_id = w.run_id("a")
    zero = history_chunk_key(run_id, 0)
    old = MemoryReadModels()
    await Projector(old, history_heads=False).apply(events[:1])
    store = _KilledAfterRowReplace()
    store.data[HISTORY][zero] = old.data[HISTORY][zero]  # the earlier projector died here
    projector = Projector(store)
    await projector.apply(events[:first])  # fresh: a head beside the stale document
    assert HISTORY_HEAD in store.data[RUNS][run_id]
    assert store.data[HISTORY][zero]["count"] == 1
    await assert_histories_read_back(store, w)
    if not remembered:
        projector = Projector(store)
    store.armed = True
    with pytest.raises(ConnectionError):
        await projector.apply(events[first:])
    assert HISTORY_HEAD not in store.data[RUNS][run_id]  # the head moved out
    await assert_histories_read_back(store, w)
    store.armed = False
    await Projector(store).apply(events[first:])
    assert store.data == expected(events)
    await assert_histories_read_back(store, w)


@pytest.mark.parametrize("path", ["fresh", "not fresh", "rebuild"])
async def test_a_stale_chunk_0_document_from_before_heads_may_decide_the_head(path: str) -> None:
    """The one case where a run's head depends on more than its events (docs/read-models.md,
    "Who gets one"): a chunk 0 document of event 1 left by a projector from before heads.
    A fresh pass puts a head beside it, a pass that reads (here: the start commit missing
    from the batch, filled from the event store) folds onto it, a rebuild drops it; every
    way, histories read as the event store holds them."""
    w = Workload()
    w.start("a")
    long_signals(w, "a", 3)
    events = w.all_events()
    run_id = w.run_id("a")
    zero = history_chunk_key(run_id, 0)
    old = MemoryReadModels()
    await Projector(old, history_heads=False).apply(events[:1])
    store = MemoryReadModels()
    store.data[HISTORY][zero] = old.data[HISTORY][zero]
    commits = MemoryCommitLog(w.commits)
    if path == "fresh":
        await Projector(store, commits).apply(events)
    elif path == "not fresh":
        later = [e for e in events if e.seq > 1]
        await Projector(store, commits).apply(later)
    else:
        await rebuild(store, commits)
    assert (HISTORY_HEAD in store.data[RUNS][run_id]) == (path != "not fresh")
    assert (zero in store.data[HISTORY]) == (path != "rebuild")
    await assert_histories_read_back(store, w)


async def test_history_bodies_are_the_same_bytes_as_with_chunk_0_documents() -> None:
    """What both history endpoints answer (`shapes.history_body`), whole and in pages, is
    byte for byte what the layout before heads gives for the same events."""
    w = workload()
    heads, chunks = MemoryReadModels(), MemoryReadModels()
    await Projector(heads).apply(w.all_events())
    await Projector(chunks).apply(w.all_events())
    without_heads(chunks)
    assert heads.data != chunks.data
    commits = MemoryCommitLog(w.commits)
    for run_id in heads.data[RUNS]:
        for after, limit in ((0, None), (0, 100), (0, 7), (5, 100), (95, 10), (100, 1000)):
            bodies = []
            for models in (heads, chunks):
                page = await RunReader(models, commits).run_history_page(run_id, after, limit)
                assert page is not None
                bodies.append(history_body(page.run, page.lines, None))
            assert bodies[0] == bodies[1], (run_id, after, limit)
    for execution_id in w.states:
        bodies = []
        for models in (heads, chunks):
            page = await RunReader(models, commits).execution_history_page(execution_id)
            assert page is not None
            bodies.append(history_body(page.run, page.lines, None))
        assert bodies[0] == bodies[1], execution_id


# --- heads switched off (projector_history_heads false: a rolling upgrade) ---------------------


async def test_with_heads_off_a_start_writes_chunk_0_as_a_document() -> None:
    """What the code before heads wrote, document for document (so an earlier API and
    projector read and extend it), and histories read back as the same bytes."""
    w = Workload()
    w.start("a")
    models = MemoryReadModels()
    await Projector(models, history_heads=False).apply(w.all_events())
    run_id = w.run_id("a")
    assert list(models.data[HISTORY]) == [history_chunk_key(run_id, 0)]
    assert HISTORY_HEAD not in models.data[RUNS][run_id]
    assert len(models.data[EXECUTIONS]) == 1

    w = workload()
    off, on = MemoryReadModels(), MemoryReadModels()
    await Projector(off, history_heads=False).apply(w.all_events())
    await Projector(on).apply(w.all_events())
    assert any(HISTORY_HEAD in r for r in on.data[RUNS].values())
    assert not any(HISTORY_HEAD in r for r in off.data[RUNS].values())
    without_heads(on)  # the layout before heads
    assert off.data == on.data
    await assert_histories_read_back(off, w)
    heads = MemoryReadModels()
    await Projector(heads).apply(w.all_events())
    commits = MemoryCommitLog(w.commits)
    for run_id in heads.data[RUNS]:
        bodies = []
        for models in (heads, off):
            page = await RunReader(models, commits).run_history_page(run_id)
            assert page is not None
            bodies.append(history_body(page.run, page.lines, None))
        assert bodies[0] == bodies[1], run_id


@pytest.mark.parametrize("bound", ["default", "small"])
async def test_with_heads_off_rows_with_heads_keep_them(
    bound: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switching heads off mid-way: rows that have a head keep folding into it (and move
    it out past the bound as ever), runs started after get chunk 0 documents, and every
    history reads back (folded from memory and from the store)."""
    if bound == "small":
        monkeypatch.setattr(projection, "HEAD_MAX_TEXT_CHARS", 3000)
    w = workload()
    events = w.all_events()
    cut = len(events) // 3
    models = MemoryReadModels()
    await Projector(models).apply(events[:cut])
    with_heads = {i for i, r in models.data[RUNS].items() if HISTORY_HEAD in r}
    assert with_heads
    remembering = Projector(models, MemoryCommitLog(w.commits), history_heads=False)
    for k in range(cut, len(events), 9):
        if k % 2:
            remembering.forget()
        await remembering.apply(events[k : k + 9])
    runs = models.data[RUNS]
    whole = fold_all(events)  # heads on throughout
    for run_id, row in runs.items():
        zero = history_chunk_key(run_id, 0)
        if run_id in with_heads:
            # Kept, or moved out exactly when the heads-on fold moves it out.
            assert (HISTORY_HEAD in row) == (HISTORY_HEAD in whole.runs[run_id]), run_id
            assert (HISTORY_HEAD in row) != (zero in models.data[HISTORY]), run_id
        else:
            assert HISTORY_HEAD not in row and zero in models.data[HISTORY], run_id
    assert len(runs) > len(with_heads)
    changes = whole.changes()
    assert all_chunks(models.data[HISTORY], runs) == all_chunks(changes[0], changes[1])
    await assert_histories_read_back(models, w)


async def test_rebuild_with_heads_off_writes_no_head() -> None:
    """`runstore projections rebuild` with heads off (a rollback): the layout before
    heads, whatever heads the store had."""
    w = workload()
    models = MemoryReadModels()
    await Projector(models).apply(w.all_events())
    assert any(HISTORY_HEAD in r for r in models.data[RUNS].values())
    before = MemoryReadModels()
    await Projector(before).apply(w.all_events())
    without_heads(before)
    await rebuild(models, MemoryCommitLog(w.commits), batch_events=50, history_heads=False)
    assert models.data == before.data


# --- point reads leave the head on the server ---------------------------------------------------


class _RecordingModels(MemoryReadModels):
    """Records the fields each run row `get` leaves on the server."""

    def __init__(self) -> None:
        super().__init__()
        self.left_out: list[tuple[str, ...]] = []

    async def get(
        self, collection: str, doc_id: str, *, without: Collection[str] = ()
    ) -> Document | None:
        if collection == RUNS:
            self.left_out.append(tuple(without))
        return await super().get(collection, doc_id, without=without)


async def test_point_reads_of_runs_and_executions_do_not_carry_the_head() -> None:
    """`get_run` / `get_workflow_execution` through the store (no run list index) answer
    rows without the head; history reads of the same runs still have it."""
    w = Workload()
    w.start("open")
    w.signals("open", 3)
    w.start("done")
    w.complete("done")
    models = _RecordingModels()
    await Projector(models).apply(w.all_events())
    reader = RunReader(models, MemoryCommitLog(w.commits))
    for name in ("open", "done"):
        run_id = w.run_id(name)
        assert HISTORY_HEAD in models.data[RUNS][run_id]
        for got in (await reader.run(run_id), await reader.execution(name)):
            assert got is not None and got["run_id"] == run_id
            assert HISTORY_HEAD not in got
            assert got["event_count"] == models.data[RUNS][run_id]["event_count"]
    assert models.left_out and all(o == (HISTORY_HEAD,) for o in models.left_out)
    models.left_out.clear()
    await assert_histories_read_back(models, w)
    assert models.left_out and all(o == () for o in models.left_out)


async def test_the_timers_running_check_reads_the_row_without_its_head() -> None:
    w = Workload()
    w.start("a")
    models = _RecordingModels()
    await Projector(models).apply(w.all_events())
    runner = ScheduleRunner(None, models, None, TimersSettings(), TimerStats())  # type: ignore[arg-type]
    assert await runner._running("a")
    assert models.left_out == [(HISTORY_HEAD,)]
