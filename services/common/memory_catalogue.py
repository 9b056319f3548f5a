"""CatalogueStore in memory, for unit tests of the API; held to the same contract suite
as MongoCatalogue (tests/contract/test_catalogue_store.py). Documents are stored and
handed out as MongoDB would (copies, lists, UTC milliseconds). `put` stands in for what
workers write (worker_registry.py); runs come from the read models it is given."""

from __future__ import annotations

import copy
import time
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any

from services.common.catalogue_store import ADMISSION_TTL_SECONDS
from services.common.readmodels.memory_store import DuplicateDocument, MemoryReadModels, as_stored
from services.common.readmodels.run_filter import aware
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


class MemoryCatalogue:
    def __init__(self, read_models: MemoryReadModels | None = None) -> None:
        self._read_models = read_models or MemoryReadModels()
        self.data: dict[str, dict[str, Document]] = {
            name: {} for name in (WORKFLOWS, REGISTRATIONS, DEPLOYMENTS, WORKERS, EXECUTION_LOGS)
        }
        self._admission: dict[str, tuple[float, Document | None]] = {}

    def put(self, collection: str, docs: Iterable[Document]) -> None:
        """Store documents whole (what workers write through worker_registry.py)."""
        for doc in docs:
            self.data[collection][str(doc["_id"])] = as_stored(doc)

    def _get(self, collection: str, doc_id: str) -> Document | None:
        doc = self.data[collection].get(doc_id)
        return copy.deepcopy(doc) if doc is not None else None

    def _all(self, collection: str) -> list[Document]:
        return [copy.deepcopy(d) for d in self.data[collection].values()]

    def _set(self, collection: str, doc_id: str, fields: Document) -> None:
        doc = self.data[collection].get(doc_id)
        if doc is None:
            return  # MongoDB's update_one without upsert: nothing
        for path, value in {**fields, "updated_at": datetime.now(UTC)}.items():
            *parents, leaf = path.split(".")
            target = doc
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = as_stored(value)

    # --- workflows ------------------------------------------------------------------

    async def workflow(self, name: str) -> Document | None:
        return self._get(WORKFLOWS, name)

    async def workflows(self) -> list[Document]:
        return self._all(WORKFLOWS)

    async def edit_workflow(self, name: str, fields: Document) -> None:
        self._set(WORKFLOWS, name, fields)
        self._admission.pop(name, None)

    async def workflow_for_execute(self, name: str, remember_missing: bool) -> Document | None:
        now = time.monotonic()
        cached = self._admission.get(name)
        if cached is not None and cached[0] > now:
            return copy.deepcopy(cached[1])
        doc = await self.workflow(name)
        if doc is not None or remember_missing:
            self._admission[name] = (now + ADMISSION_TTL_SECONDS, doc)
        return doc

    async def workflow_names_with_runs(self, statuses: Collection[str]) -> set[str]:
        runs = await self._read_models.snapshot(RUNS)
        return {str(r["workflow_name"]) for r in runs.values() if r.get("status") in statuses}

    # --- registrations, deployments, workers ----------------------------------------

    async def registrations(self) -> list[Document]:
        return self._all(REGISTRATIONS)

    async def registration(self, registration_id: str) -> Document | None:
        return self._get(REGISTRATIONS, registration_id)

    async def deployments(self) -> list[Document]:
        return self._all(DEPLOYMENTS)

    async def deployment(self, name: str) -> Document | None:
        return self._get(DEPLOYMENTS, name)

    async def create_deployment(self, doc: Document) -> None:
        if str(doc["_id"]) in self.data[DEPLOYMENTS]:
            raise DuplicateDocument(f"deployment {doc['_id']!r} exists")
        self.put(DEPLOYMENTS, [doc])

    async def edit_deployment(
        self, name: str, fields: Document, increments: Document | None = None
    ) -> None:
        doc = self.data[DEPLOYMENTS].get(name)
        if doc is None:
            return
        self._set(DEPLOYMENTS, name, fields)
        for key, step in (increments or {}).items():
            doc[key] = doc.get(key, 0) + step

    async def delete_deployment(self, name: str) -> None:
        self.data[DEPLOYMENTS].pop(name, None)

    async def workers(self, deployment: str | None = None) -> list[Document]:
        return [w for w in self._all(WORKERS) if deployment in (None, w.get("deployment_name"))]

    # --- shipped log records --------------------------------------------------------

    async def execution_log_chunks(self, execution_id: str, first: int = 0) -> list[Document]:
        found: list[Document] = []
        while (doc := self._get(EXECUTION_LOGS, log_chunk_id(execution_id, first))) is not None:
            found.append(doc)
            first += 1
        return found

    async def deployment_log_chunks(
        self, deployment: str, shipped_from: datetime | None, limit: int
    ) -> list[Document]:
        chunks = [
            c
            for c in self._all(EXECUTION_LOGS)
            if c.get("deployment_name") == deployment
            and (shipped_from is None or aware(c["shipped_at"]) >= aware(shipped_from))
        ]
        chunks.sort(key=lambda c: (aware(c["shipped_at"]), str(c["_id"])))
        return chunks[:limit]
