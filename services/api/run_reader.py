"""Reads runs, executions and histories, folding commits the projector has not applied
yet, so a point read reflects every command whose HTTP call has returned.

Why folding from the execution pointer's `seq` is enough: the projector writes a batch's
history chunks, then its runs, then its execution pointers. So once a pointer says `seq`,
every run and history event of that execution up to `seq` is already written, and the
commits after `seq` (read by `_id` until one is missing) are all a reader can be missing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from schemas.commits import Commit
from schemas.common import TERMINAL_STATUSES
from schemas.events import Event
from services.api.run_list import Cursor, RunFilter, make_token, read_token
from services.common.commit_log import COMMITS, locate_run, read_commit
from services.common.readmodels.mongo_store import load_by_ids
from services.common.readmodels.projection import (
    LIST_FIELDS,
    apply_to_execution,
    apply_to_run,
    event_json,
    events_of_chunks,
    history_chunk_ids,
)
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS

Document = dict[str, Any]

_FINAL = frozenset(s.value for s in TERMINAL_STATUSES)
# Most commits read at once while catching up with the event store.
_COMMIT_WINDOW = 32
_LIST_PROJECTION = dict.fromkeys(LIST_FIELDS, 1)


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as of the newest commit, and the events the projection has not written."""

    run: Document
    unprojected: list[Event]


class RunReader:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._runs = db[RUNS]
        self._executions = db[EXECUTIONS]
        self._history = db[HISTORY]
        self._commits = db[COMMITS]

    # --- point reads ---------------------------------------------------------------

    async def execution(self, execution_id: str) -> Document | None:
        """The latest run of an execution, as of the newest commit."""
        view = await self._latest(execution_id)
        return view.run if view else None

    async def run(self, run_id: str) -> Document | None:
        """One run by id, as of the newest commit of its execution."""
        view = await self._run(run_id)
        return view.run if view else None

    async def run_history(self, run_id: str) -> tuple[Document, list[Document]] | None:
        """A run and its events ordered by event_number; None if the run is unknown."""
        view = await self._run(run_id)
        return (view.run, await self._events(view)) if view else None

    async def execution_history(self, execution_id: str) -> tuple[Document, list[Document]] | None:
        """The latest run of an execution and its events (see `run_history`)."""
        view = await self._latest(execution_id)
        return (view.run, await self._events(view)) if view else None

    async def _latest(self, execution_id: str) -> RunView | None:
        pointer = await self._executions.find_one({"_id": execution_id})
        seq = int(pointer["seq"]) if pointer else 0
        newer = await self._commits_after(execution_id, seq)
        for commit in newer:
            for event in commit.events:
                pointer = apply_to_execution(pointer, event)
        if pointer is None:
            return None
        latest = pointer["latest_run_id"]
        run = await self._runs.find_one({"_id": latest})
        mine = [e for c in newer for e in c.events if e.run_id == latest]
        return _fold(run, mine)

    async def _run(self, run_id: str) -> RunView | None:
        run = await self._runs.find_one({"_id": run_id})
        if run is not None and run["status"] in _FINAL:
            # Nothing follows a run's terminal event (a reset or restart opens another
            # run), and the projector wrote its history before the row: it is final.
            return RunView(run, [])
        if run is not None:
            execution_id = run["execution_id"]
        else:
            # Not projected (yet): the engine's locator names its execution.
            located = await locate_run(self._db, run_id)
            if located is None:
                return None
            execution_id = located
        pointer = await self._executions.find_one({"_id": execution_id})
        seq = int(pointer["seq"]) if pointer else 0
        if run is None or int(run["seq"]) < seq:
            # Read again now that the pointer is known: the run is at least at `seq`.
            run = await self._runs.find_one({"_id": run_id})
        after = max(seq, int(run["seq"]) if run else 0)
        newer = await self._commits_after(execution_id, after)
        return _fold(run, [e for c in newer for e in c.events if e.run_id == run_id])

    async def _commits_after(self, execution_id: str, seq: int) -> list[Commit]:
        """Commits after `seq`, by `_id`, until one is missing. Usually there is none
        (one read); when the projector is far behind, the reads go out in growing
        concurrent windows instead of one round trip per commit."""
        found: list[Commit] = []
        window = 1
        while True:
            start = seq + len(found) + 1
            batch = await asyncio.gather(
                *(read_commit(self._commits, execution_id, s) for s in range(start, start + window))
            )
            for commit in batch:
                if commit is None:
                    return found
                found.append(commit)
            window = min(window * 2, _COMMIT_WINDOW)

    async def _events(self, view: RunView) -> list[Document]:
        run_id = view.run["run_id"]
        # Event numbers are contiguous in a run, and the unprojected events are its last
        # ones: the chunks hold the ones before.
        projected = int(view.run.get("event_count", 0)) - len(view.unprojected)
        chunks = await load_by_ids(self._history, history_chunk_ids(run_id, projected))
        events = events_of_chunks(chunks.values())
        for event in view.unprojected:
            events.setdefault(event.event_number, event_json(event))
        return [events[n] for n in sorted(events)]

    # --- the list -------------------------------------------------------------------

    async def list_runs(
        self, flt: RunFilter, page_size: int, token: str | None
    ) -> tuple[list[Document], str | None]:
        """One page of runs and the token of the next (None on the last page).

        Raises BadPageToken for a token not made for `flt`.
        """
        after: Cursor | None = read_token(flt, token) if token else None
        rows: list[Document] = []
        for query in flt.page_queries(after):
            want = page_size + 1 - len(rows)
            cursor = self._runs.find(query, _LIST_PROJECTION).sort(flt.sort()).limit(want)
            rows += await cursor.to_list()
            if len(rows) > page_size:
                break
        if len(rows) <= page_size:
            return rows, None
        return rows[:page_size], make_token(flt, rows[page_size - 1])


def _fold(run: Document | None, events: list[Event]) -> RunView | None:
    """`run` with `events` applied: every event of this run after a seq up to which the
    projection has written the run's whole history."""
    for event in events:
        run = apply_to_run(run, event)
    return RunView(run, events) if run is not None else None
