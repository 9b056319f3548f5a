"""The CatalogueStore contract, written once and run against every adapter: in memory
(`MemoryCatalogue`) and on the test session's MongoDB-protocol server (`MongoCatalogue`,
seeded as workers write: whole documents into the catalogue collections)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from services.common.catalogue_store import CatalogueStore
from services.common.memory_catalogue import MemoryCatalogue
from services.common.mongo_catalogue import MongoCatalogue
from services.common.readmodels.memory_store import DuplicateDocument, MemoryReadModels
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.readmodels.store import RUNS, Document, ReadModelStore
from services.common.settings import READ_MODELS_SUFFIX
from services.common.worker_registry import (
    EXECUTION_LOGS,
    REGISTRATIONS,
    WORKERS,
    WORKFLOWS,
    log_chunk_id,
)

Seed = Callable[[str, Iterable[Document]], Awaitable[None]]
T = datetime(2026, 3, 1, tzinfo=UTC)


def ids(docs: list[Document]) -> list[str]:
    return sorted(str(d["_id"]) for d in docs)


class CatalogueContract:
    """Subclasses provide `catalogue`, `seed` (writes whole documents, as workers do) and
    `runs` (the read models' store, for the runs a status filter looks at)."""

    async def test_workflows_are_read_by_name_and_all(
        self, catalogue: CatalogueStore, seed: Seed
    ) -> None:
        await seed(WORKFLOWS, [{"_id": "a", "tags": ["x"]}, {"_id": "b"}])
        assert await catalogue.workflow("a") == {"_id": "a", "tags": ["x"]}
        assert await catalogue.workflow("zz") is None
        assert ids(await catalogue.workflows()) == ["a", "b"]

    async def test_an_edit_sets_fields_and_dotted_paths_and_the_time(
        self, catalogue: CatalogueStore, seed: Seed
    ) -> None:
        await seed(WORKFLOWS, [{"_id": "a", "edits": {"description": "d"}, "archived": False}])
        before = datetime.now(UTC) - timedelta(seconds=1)
        await catalogue.edit_workflow("a", {"edits.display_name": "A", "archived": True})
        doc = await catalogue.workflow("a")
        assert doc is not None
        assert doc["edits"] == {"description": "d", "display_name": "A"}
        assert doc["archived"] is True
        assert doc["updated_at"] >= before and doc["updated_at"].utcoffset() == timedelta(0)
        await catalogue.edit_workflow("unknown", {"archived": True})  # no such workflow
        assert await catalogue.workflow("unknown") is None

    async def test_execute_reuses_a_workflow_until_this_instance_edits_it(
        self, catalogue: CatalogueStore, seed: Seed
    ) -> None:
        assert await catalogue.workflow_for_execute("a", remember_missing=False) is None
        await seed(WORKFLOWS, [{"_id": "a", "archived": False}])
        # A miss is not remembered without `remember_missing`: a new workflow runs at once.
        found = await catalogue.workflow_for_execute("a", remember_missing=False)
        assert found is not None and found["archived"] is False
        await catalogue.edit_workflow("a", {"archived": True})
        found = await catalogue.workflow_for_execute("a", remember_missing=False)
        assert found is not None and found["archived"] is True

    async def test_workflow_names_with_runs_in_statuses(
        self, catalogue: CatalogueStore, runs: ReadModelStore
    ) -> None:
        await runs.save(
            RUNS,
            {
                "r1": {"_id": "r1", "workflow_name": "a", "status": "FAILED"},
                "r2": {"_id": "r2", "workflow_name": "b", "status": "RUNNING"},
                "r3": {"_id": "r3", "workflow_name": "c", "status": "COMPLETED"},
            },
        )
        assert await catalogue.workflow_names_with_runs(["FAILED", "RUNNING"]) == {"a", "b"}
        assert await catalogue.workflow_names_with_runs(["TIMED_OUT"]) == set()

    async def test_registrations_and_workers(self, catalogue: CatalogueStore, seed: Seed) -> None:
        await seed(REGISTRATIONS, [{"_id": "r1", "workflow_name": "a", "deployment_name": "d"}])
        await seed(
            WORKERS,
            [
                {"_id": "w1", "deployment_name": "d"},
                {"_id": "w2", "deployment_name": "e"},
            ],
        )
        assert ids(await catalogue.registrations()) == ["r1"]
        assert await catalogue.registration("r1") is not None
        assert await catalogue.registration("r9") is None
        assert ids(await catalogue.workers()) == ["w1", "w2"]
        assert ids(await catalogue.workers("d")) == ["w1"]
        assert await catalogue.workers("none") == []

    async def test_a_deployment_is_created_edited_and_deleted(
        self, catalogue: CatalogueStore
    ) -> None:
        await catalogue.create_deployment({"_id": "d", "stopped": False, "created_at": T})
        with pytest.raises((DuplicateKeyError, DuplicateDocument)):
            await catalogue.create_deployment({"_id": "d"})
        await catalogue.edit_deployment("d", {"stopped": True}, {"restart_generation": 1})
        await catalogue.edit_deployment("d", {}, {"restart_generation": 1})
        doc = await catalogue.deployment("d")
        assert doc is not None
        assert (doc["stopped"], doc["restart_generation"], doc["created_at"]) == (True, 2, T)
        assert ids(await catalogue.deployments()) == ["d"]
        await catalogue.delete_deployment("d")
        assert await catalogue.deployment("d") is None
        await catalogue.delete_deployment("d")  # again: nothing

    async def test_an_executions_log_chunks_are_read_until_one_is_missing(
        self, catalogue: CatalogueStore, seed: Seed
    ) -> None:
        chunks = [{"_id": log_chunk_id("x", n), "chunk": n, "records": []} for n in (0, 1, 3)]
        await seed(EXECUTION_LOGS, chunks)
        assert [c["chunk"] for c in await catalogue.execution_log_chunks("x")] == [0, 1]
        assert [c["chunk"] for c in await catalogue.execution_log_chunks("x", 1)] == [1]
        assert await catalogue.execution_log_chunks("y") == []

    async def test_a_deployments_log_chunks_come_in_shipping_order(
        self, catalogue: CatalogueStore, seed: Seed
    ) -> None:
        def chunk(chunk_id: str, deployment: str, ms: int) -> Document:
            shipped = T + timedelta(milliseconds=ms)
            return {"_id": chunk_id, "deployment_name": deployment, "shipped_at": shipped}

        await seed(
            EXECUTION_LOGS,
            [chunk("c", "d", 5), chunk("a", "d", 5), chunk("b", "d", 1), chunk("z", "e", 0)],
        )
        got = await catalogue.deployment_log_chunks("d", None, 10)
        assert [c["_id"] for c in got] == ["b", "a", "c"]
        got = await catalogue.deployment_log_chunks("d", T + timedelta(milliseconds=5), 1)
        assert [c["_id"] for c in got] == ["a"]


class TestMemoryCatalogue(CatalogueContract):
    @pytest.fixture
    def runs(self) -> MemoryReadModels:
        return MemoryReadModels()

    @pytest.fixture
    def catalogue(self, runs: MemoryReadModels) -> MemoryCatalogue:
        return MemoryCatalogue(runs)

    @pytest.fixture
    def seed(self, catalogue: MemoryCatalogue) -> Seed:
        async def put(collection: str, docs: Iterable[Document]) -> None:
            catalogue.put(collection, docs)

        return put


class TestMongoCatalogue(CatalogueContract):
    @pytest.fixture
    async def models(self, db: Any) -> AsyncIterator[Any]:
        """The read models' database, apart from the catalogue's (as the API runs it)."""
        name = db.name + READ_MODELS_SUFFIX
        yield db.client[name]
        await db.client.drop_database(name)

    @pytest.fixture
    def runs(self, models: Any) -> ReadModelStore:
        return MongoReadModelStore(models)

    @pytest.fixture
    def catalogue(self, db: Any, models: Any) -> MongoCatalogue:
        return MongoCatalogue(db, models)

    @pytest.fixture
    def seed(self, db: Any) -> Seed:
        async def insert(collection: str, docs: Iterable[Document]) -> None:
            await db[collection].insert_many(list(docs))

        return insert

    async def test_concurrent_executes_share_one_read_of_a_workflow(
        self, catalogue: MongoCatalogue, seed: Seed, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await seed(WORKFLOWS, [{"_id": "a", "archived": False}])
        reads: list[str] = []
        read = catalogue.workflow

        async def counted(name: str) -> Document | None:
            reads.append(name)
            return await read(name)

        monkeypatch.setattr(catalogue, "workflow", counted)
        found = await asyncio.gather(
            *(catalogue.workflow_for_execute("a", remember_missing=False) for _ in range(20))
        )
        assert reads == ["a"]
        assert all(doc is not None and doc["_id"] == "a" for doc in found)
        # An edit here is seen by the next execute, read again.
        await catalogue.edit_workflow("a", {"archived": True})
        again = await catalogue.workflow_for_execute("a", remember_missing=False)
        assert again is not None and again["archived"] is True
        assert reads == ["a", "a"]
