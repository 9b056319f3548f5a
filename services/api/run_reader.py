"""Reads runs and executions, folding commits the projector has not applied yet, so a
point read reflects every command whose HTTP call has returned."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.api.run_list import RunFilter, after_token, make_token
from services.common.commit_log import COMMITS, read_commits_after
from services.common.readmodels.projection import apply_to_execution, apply_to_run
from services.common.readmodels.store import EXECUTIONS, RUNS

Document = dict[str, Any]


class RunReader:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._runs = db[RUNS]
        self._executions = db[EXECUTIONS]
        self._commits = db[COMMITS]

    async def execution(self, execution_id: str) -> Document | None:
        """The latest run of an execution, as of the newest commit."""
        pointer = await self._executions.find_one({"_id": execution_id})
        seq = int(pointer["seq"]) if pointer else 0
        newer = await read_commits_after(self._commits, execution_id, seq)
        latest_run = pointer["latest_run_id"] if pointer else None
        run = await self._runs.find_one({"_id": latest_run}) if latest_run else None
        if not newer:
            return run
        runs: dict[str, Document | None] = {latest_run: run} if latest_run else {}
        for commit in newer:
            for event in commit.events:
                pointer = apply_to_execution(pointer, event)
                if event.run_id not in runs:
                    runs[event.run_id] = await self._runs.find_one({"_id": event.run_id})
                runs[event.run_id] = apply_to_run(runs[event.run_id], event)
        return runs.get(pointer["latest_run_id"]) if pointer else None

    async def run(self, run_id: str) -> Document | None:
        """One run by id, with its execution's newer commits folded on."""
        run = await self._runs.find_one({"_id": run_id})
        if run is None:
            return None
        newer = await read_commits_after(self._commits, run["execution_id"], int(run["seq"]))
        for commit in newer:
            for event in commit.events:
                if event.run_id == run_id:
                    run = apply_to_run(run, event) or run
        return run

    async def list_runs(
        self, flt: RunFilter, page_size: int, token: str | None
    ) -> tuple[list[Document], str | None]:
        query = flt.query()
        if token:
            clause = after_token(flt, token)
            query = {"$and": [query, clause]} if query else clause
        rows = await self._runs.find(query).sort(flt.sort()).limit(page_size + 1).to_list()
        more = len(rows) > page_size
        rows = rows[:page_size]
        return rows, (make_token(flt, rows[-1]) if more and rows else None)
