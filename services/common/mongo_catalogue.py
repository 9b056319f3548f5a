"""CatalogueStore (catalogue_store.py) on MongoDB / FerretDB: `_id` reads, small scans
of the catalogue collections, and a sorted query for a deployment's logs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.common.catalogue_store import ADMISSION_TTL_SECONDS
from services.common.readmodels.store import RUNS
from services.common.worker_registry import (
    DEPLOYMENTS,
    EXECUTION_LOGS,
    REGISTRATIONS,
    WORKERS,
    WORKFLOWS,
    log_chunk_id,
)

Document = dict[str, Any]

CATALOGUE_SCAN_LIMIT = 10_000
"""Most catalogue documents one list reads (the catalogue is filtered in memory: it is
small — workflows, not runs — and every filter then costs the same on FerretDB)."""
MAX_LOG_CHUNKS_READ = 10_000
_ADMISSION_MEMORY = 10_000


class MongoCatalogue:
    def __init__(self, db: AsyncDatabase[Document], read_models: AsyncDatabase[Document]) -> None:
        self._db = db
        # The run rows the status filter reads (services/common/mongo.py,
        # `read_models_database`); the catalogue's own documents are in `db`.
        self._runs = read_models[RUNS]
        # workflow name -> (valid until, its document or None): execute's admission reads.
        self._admission: dict[str, tuple[float, Document | None]] = {}
        # workflow name -> the admission read under way: one at a time per name.
        self._loading: dict[str, asyncio.Future[Document | None]] = {}

    # --- workflows ------------------------------------------------------------------

    async def workflow(self, name: str) -> Document | None:
        return await self._db[WORKFLOWS].find_one({"_id": name})

    async def workflows(self) -> list[Document]:
        return await self._db[WORKFLOWS].find({}).to_list(CATALOGUE_SCAN_LIMIT)

    async def edit_workflow(self, name: str, fields: Document) -> None:
        """Set `fields` (dotted paths allowed) and `updated_at` on a workflow."""
        update = {**fields, "updated_at": datetime.now(UTC)}
        await self._db[WORKFLOWS].update_one({"_id": name}, {"$set": update})
        self._admission.pop(name, None)  # the next execute here reads it again
        self._loading.pop(name, None)  # (a read under way may predate the edit)

    async def workflow_for_execute(self, name: str, remember_missing: bool) -> Document | None:
        """`workflow(name)`, reused for ADMISSION_TTL_SECONDS. A miss is remembered only
        with `remember_missing`: a workflow a worker has just registered must be
        executable at once."""
        now = time.monotonic()
        cached = self._admission.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        # When the entry expires under load, every execute of that moment would read it:
        # they share one read instead (32 clients made up to 32 reads a second).
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self.workflow(name))
            self._loading[name] = loading
            loading.add_done_callback(lambda done: self._loaded(name, done))
        doc = await asyncio.shield(loading)
        if len(self._admission) > _ADMISSION_MEMORY:
            self._admission.clear()
        if doc is not None or remember_missing:
            self._admission[name] = (now + ADMISSION_TTL_SECONDS, doc)
        return doc

    def _loaded(self, name: str, done: asyncio.Future[Document | None]) -> None:
        if self._loading.get(name) is done:
            del self._loading[name]
        if not done.cancelled():
            done.exception()  # retrieved here too, should every waiter have gone

    async def workflow_names_with_runs(self, statuses: Collection[str]) -> set[str]:
        """Names of the workflows that have a run in one of `statuses`."""
        query = {"status": {"$in": list(statuses)}}
        return {str(n) for n in await self._runs.distinct("workflow_name", query)}

    # --- registrations, deployments, workers ----------------------------------------

    async def registrations(self) -> list[Document]:
        return await self._db[REGISTRATIONS].find({}).to_list(CATALOGUE_SCAN_LIMIT)

    async def registration(self, registration_id: str) -> Document | None:
        return await self._db[REGISTRATIONS].find_one({"_id": registration_id})

    async def deployments(self) -> list[Document]:
        return await self._db[DEPLOYMENTS].find({}).to_list(CATALOGUE_SCAN_LIMIT)

    async def deployment(self, name: str) -> Document | None:
        return await self._db[DEPLOYMENTS].find_one({"_id": name})

    async def create_deployment(self, doc: Document) -> None:
        await self._db[DEPLOYMENTS].insert_one(doc)

    async def edit_deployment(
        self, name: str, fields: Document, increments: Document | None = None
    ) -> None:
        """Set `fields` and `updated_at`, and add `increments`."""
        ops: Document = {"$set": {**fields, "updated_at": datetime.now(UTC)}}
        if increments:
            ops["$inc"] = increments
        await self._db[DEPLOYMENTS].update_one({"_id": name}, ops)

    async def delete_deployment(self, name: str) -> None:
        await self._db[DEPLOYMENTS].delete_one({"_id": name})

    async def workers(self, deployment: str | None = None) -> list[Document]:
        """Every worker on record (of one deployment), live or not."""
        query: Document = {} if deployment is None else {"deployment_name": deployment}
        return await self._db[WORKERS].find(query).to_list(CATALOGUE_SCAN_LIMIT)

    # --- shipped log records --------------------------------------------------------

    async def execution_log_chunks(self, execution_id: str, first: int = 0) -> list[Document]:
        """An execution's log chunks from number `first` on, by `_id` until one is missing."""
        found: list[Document] = []
        logs = self._db[EXECUTION_LOGS]
        chunk = first
        while chunk < MAX_LOG_CHUNKS_READ:
            doc = await logs.find_one({"_id": log_chunk_id(execution_id, chunk)})
            if doc is None:
                break
            found.append(doc)
            chunk += 1
        return found

    async def deployment_log_chunks(
        self, deployment: str, shipped_from: datetime | None, limit: int
    ) -> list[Document]:
        """Up to `limit` log chunks of a deployment's workers shipped at or after
        `shipped_from`, in shipping order (then `_id`)."""
        query: Document = {"deployment_name": deployment}
        if shipped_from is not None:
            query["shipped_at"] = {"$gte": shipped_from}
        cursor = (
            self._db[EXECUTION_LOGS].find(query).sort([("shipped_at", 1), ("_id", 1)]).limit(limit)
        )
        return await cursor.to_list()
