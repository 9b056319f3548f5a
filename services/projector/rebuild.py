"""Rebuild the read models from the event store: drop them, then fold every commit.

The projector must be stopped while this runs (each read-model document has one writer
at a time). When it starts again it resumes from its committed offsets; the events it
re-reads are already reflected and the position guards skip them.

With `parking`, an execution whose commits cannot be projected does not stop the rebuild:
it is parked (services/projector/parking.py) and the rebuild goes on; the parked set is
emptied first, since everything is folded again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.events import Event
from services.common.commit_log import CommitLog
from services.common.readmodels.projection import ReadModelDocs, ids_touched, project
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS, Document, ReadModelStore
from services.projector.parking import ParkedExecutions, is_transient

Progress = Callable[[int, int], None]
"""Called with (commits done, commits expected) after each flush."""


@dataclass(frozen=True, slots=True)
class RebuildReport:
    commits: int
    events: int
    runs: int
    executions: int
    history_chunks: int
    """History documents: chunks and sealed blocks."""
    parked: int = 0


async def rebuild(
    store: ReadModelStore,
    commits: CommitLog,
    *,
    batch_events: int = 5000,
    progress: Progress | None = None,
    parking: ParkedExecutions | None = None,
    history_heads: bool = True,
) -> RebuildReport:
    """Drop runs/executions/history and rebuild them from every commit. `history_heads`
    False: chunk 0 of every run in its document, no run row with a head (the layout
    versions before heads read; settings `projector_history_heads`)."""
    total = await commits.count()
    await store.drop_all()
    await store.setup()
    if parking is not None:
        await parking.clear()
    parked = 0
    flushed: set[str] = set()  # executions already written by an earlier flush
    pending: list[Event] = []
    current: str | None = None
    done = events = 0
    counts = {RUNS: 0, EXECUTIONS: 0, HISTORY: 0}

    async def flush() -> None:
        nonlocal pending, parked
        if not pending:
            return
        try:
            written = await _write(store, pending, flushed, history_heads)
        except Exception as exc:
            if parking is None or is_transient(exc):
                raise
            # Execution by execution, replacing what the failed attempt may have written.
            written = dict.fromkeys(counts, 0)
            by_execution: dict[str, list[Event]] = {}
            for e in pending:
                by_execution.setdefault(e.execution_id, []).append(e)
            for execution_id, own in by_execution.items():
                try:
                    one = await _write(store, own, flushed | {execution_id}, history_heads)
                except Exception as one_exc:
                    if is_transient(one_exc):
                        raise
                    await parking.park(execution_id, None, own[0].seq, one_exc)
                    parked += 1
                    continue
                for name, n in one.items():
                    written[name] += n
        for name, n in written.items():
            counts[name] += n
        flushed.update(e.execution_id for e in pending)
        pending = []
        if progress is not None:
            progress(done, total)

    async for commit in commits.scan():
        # Cut batches only between executions: an execution's documents are then final
        # when written, and are inserted rather than replaced.
        if commit.execution_id != current and len(pending) >= batch_events:
            await flush()
        current = commit.execution_id
        pending.extend(commit.events)
        done += 1
        events += len(commit.events)
    await flush()
    if progress is not None:
        progress(done, done)  # `total` was an estimate (it counts run locators too)
    return RebuildReport(done, events, counts[RUNS], counts[EXECUTIONS], counts[HISTORY], parked)


async def _write(
    store: ReadModelStore, events: list[Event], flushed: set[str], history_heads: bool
) -> dict[str, int]:
    # `_id` order of commits keeps an execution's commits together unless execution ids
    # share a prefix up to a ':'; such an execution seen again loads what was written.
    again = [e for e in events if e.execution_id in flushed]
    docs = ReadModelDocs()
    if again:
        run_ids, execution_ids, chunk_ids = ids_touched(again)
        docs.runs = await store.load(RUNS, run_ids)
        docs.executions = await store.load(EXECUTIONS, execution_ids)
        docs.history = await store.load(HISTORY, chunk_ids)
    existing = {
        RUNS: set(docs.runs),
        EXECUTIONS: set(docs.executions),
        HISTORY: set(docs.history),
    }
    history, runs, pointers = project(events, docs, history_heads).changes()
    written: dict[str, int] = {}
    for name, changed in ((HISTORY, history), (RUNS, runs), (EXECUTIONS, pointers)):
        new: dict[str, Document] = {i: d for i, d in changed.items() if i not in existing[name]}
        old = {i: d for i, d in changed.items() if i in existing[name]}
        await store.insert(name, new)
        await store.save(name, old)
        written[name] = len(new)
    return written
