"""Applies a batch of events to the read models: load by `_id`, fold, write back in bulk."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from schemas.events import Event
from services.common.readmodels.projection import ReadModelDocs, ids_touched, project
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS, ReadModelStore
from services.projector.commit_source import CommitSource

log = logging.getLogger(__name__)


class Projector:
    """Folds events onto the read models, one batch at a time.

    Single writer per execution (the owner of its partition), so read-fold-replace is
    safe without compare-and-set. Idempotent: the position guards in `projection` ignore
    an event a document already reflects, so a re-delivered or replayed batch changes
    nothing. Gap-free: an event whose execution's pointer is more than one commit behind
    (a lost or reordered record) first pulls the missing commits from the event store, so
    every document is always the fold of a prefix of its execution's commits.
    """

    def __init__(self, store: ReadModelStore, commits: CommitSource | None = None) -> None:
        self._store = store
        self._commits = commits

    async def apply(self, events: Iterable[Event]) -> int:
        """Project `events` (in stream order per execution); returns how many were given."""
        given = list(events)
        if not given:
            return 0
        executions = await self._store.load(EXECUTIONS, {e.execution_id for e in given})
        ordered = await self._fill_gaps(given, {i: int(p["seq"]) for i, p in executions.items()})
        run_ids, _, chunk_ids = ids_touched(ordered)
        runs, chunks = await asyncio.gather(
            self._store.load(RUNS, run_ids), self._store.load(HISTORY, chunk_ids)
        )
        docs = project(ordered, ReadModelDocs(runs=runs, executions=executions, history=chunks))
        history, changed_runs, pointers = docs.changes()
        # History first, then runs, then pointers: a reader who finds a pointer at seq s
        # finds every run and history event up to s (the API folds commits after s).
        await self._store.save(HISTORY, history)
        await self._store.save(RUNS, changed_runs)
        await self._store.save(EXECUTIONS, pointers)
        return len(given)

    async def _fill_gaps(self, events: list[Event], seen: dict[str, int]) -> list[Event]:
        """`events` with the events of any commit missing before them spliced in."""
        if self._commits is None:
            return events
        last = dict(seen)
        missing: dict[int, tuple[str, list[int]]] = {}  # event index -> (execution, seqs)
        for i, e in enumerate(events):
            upto = last.get(e.execution_id, 0)
            if e.seq > upto + 1:
                missing[i] = (e.execution_id, list(range(upto + 1, e.seq)))
            last[e.execution_id] = max(upto, e.seq)
        if not missing:
            return events
        fetched = await asyncio.gather(
            *(self._commits.read(execution_id, seqs) for execution_id, seqs in missing.values())
        )
        fills = dict(zip(missing, fetched, strict=True))
        out: list[Event] = []
        for i, e in enumerate(events):
            for commit in fills.get(i, ()):
                out.extend(commit.events)
            out.append(e)
        log.warning(
            "filled %d missing commits from the event store",
            sum(len(c) for c in fills.values()),
        )
        return out
