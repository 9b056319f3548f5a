"""Applies a batch of events to the read models: load by `_id`, fold, write back in bulk."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from schemas.events import Event
from services.common.readmodels.projection import (
    apply_to_execution,
    apply_to_history,
    apply_to_run,
    history_chunk_id,
)
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS, Document, ReadModelStore

log = logging.getLogger(__name__)


class Projector:
    """Single writer per execution (its partition's owner), so read-fold-replace is safe."""

    def __init__(self, store: ReadModelStore) -> None:
        self._store = store

    async def apply(self, events: Iterable[Event]) -> int:
        events = list(events)
        if not events:
            return 0
        runs = await self._store.load(RUNS, {e.run_id for e in events})
        executions = await self._store.load(EXECUTIONS, {e.execution_id for e in events})
        chunks = await self._store.load(
            HISTORY, {history_chunk_id(e.run_id, e.event_number) for e in events}
        )
        changed_runs: dict[str, Document] = {}
        changed_executions: dict[str, Document] = {}
        changed_chunks: dict[str, Document] = {}
        for event in events:
            run = apply_to_run(runs.get(event.run_id), event)
            if run is not None and run is not runs.get(event.run_id):
                runs[event.run_id] = changed_runs[event.run_id] = run
            pointer = apply_to_execution(executions.get(event.execution_id), event)
            if pointer is not None and pointer is not executions.get(event.execution_id):
                executions[event.execution_id] = changed_executions[event.execution_id] = pointer
            chunk_id = history_chunk_id(event.run_id, event.event_number)
            before = chunks.get(chunk_id)
            if before is None or str(event.event_number) not in before["events"]:
                chunk = apply_to_history(before, event, event.model_dump(mode="json"))
                chunks[chunk_id] = changed_chunks[chunk_id] = chunk
        # History first, then runs, then pointers: a reader who finds a pointer finds
        # its run, and a run's history is never behind the run row.
        await self._store.save(HISTORY, changed_chunks)
        await self._store.save(RUNS, changed_runs)
        await self._store.save(EXECUTIONS, changed_executions)
        return len(events)
