"""The probe that tells whether the database ends an ordered insert at its first refused
document past 100 documents (services/common/mongo.py), and what the event store does with
its answer: one insert request per round, or requests of 100."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from pymongo.errors import BulkWriteError, OperationFailure

from services.common.mongo import ordered_insert_stops_at_refusal
from services.engine import mongo_event_store
from services.engine.event_store import AppendFailure, AppendReport
from tests.contract.test_event_store import counting_store, in_own_run, seqs_stored


async def scratch_collections(db: Any) -> list[str]:
    return [n for n in await db.list_collection_names() if n.startswith("probe_ordered")]


async def test_the_session_server_stops_an_ordered_insert_at_its_refusal(db: Any) -> None:
    # MongoDB, or the local FerretDB with deploy/local/ferretdb/01-ordered-insert.patch.
    assert await ordered_insert_stops_at_refusal(db) is True
    assert await scratch_collections(db) == []


class FakeCollection:
    """An insert handler shaped like FerretDB v1.24.2's (internal/handler/msg_insert.go):
    transactions of 100; a refused one is retried document by document up to the refused
    document, and then (`stops_request=False`, upstream) the next hundred goes on."""

    def __init__(self, server: FakeDatabase, name: str) -> None:
        self._server, self._name = server, name

    @property
    def ids(self) -> list[Any]:
        return self._server.collections.setdefault(self._name, [])

    async def insert_one(self, doc: dict[str, Any]) -> None:
        await self.insert_many([doc], ordered=True)

    async def insert_many(self, docs: Sequence[dict[str, Any]], ordered: bool) -> None:
        assert ordered
        errors: list[dict[str, Any]] = []
        inserted = 0
        for start in range(0, len(docs), 100):
            batch = [d["_id"] for d in docs[start : start + 100]]
            if not set(batch) & set(self.ids):
                self.ids.extend(batch)
                inserted += len(batch)
                continue
            for offset, doc_id in enumerate(batch):
                if doc_id in self.ids:
                    errors.append({"index": start + offset, "code": 11000})
                    break
                self.ids.append(doc_id)
                inserted += 1
            if self._server.stops_request:
                break
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nInserted": inserted})

    async def find(self, _filter: dict[str, Any], _projection: Any) -> AsyncIterator[Any]:
        for doc_id in list(self.ids):
            yield {"_id": doc_id}

    async def drop(self) -> None:
        self._server.collections.pop(self._name, None)


class FakeDatabase:
    def __init__(self, stops_request: bool) -> None:
        self.stops_request = stops_request
        self.collections: dict[str, list[Any]] = {}

    def __getitem__(self, name: str) -> FakeCollection:
        return FakeCollection(self, name)


@pytest.mark.parametrize(("stops_request", "expected"), [(False, False), (True, True)])
async def test_the_probe_tells_an_upstream_ferretdb_from_a_patched_one(
    stops_request: bool, expected: bool
) -> None:
    server = FakeDatabase(stops_request)
    assert await ordered_insert_stops_at_refusal(server) is expected  # type: ignore[arg-type]
    assert server.collections == {}  # the scratch collection is dropped


async def requests_and_gap(db: Any, mongo_url: str) -> tuple[int, list[int]]:
    """Insert requests a store (probing) sends for a round of 150 commits refused at the
    131st (past the first hundred documents), and which seqs are stored after it."""
    async with counting_store(mongo_url, db) as (store, inserts):
        await store.append([in_own_run("other", 1, command_id="dup")])
        inserts.count = 0
        commits = [in_own_run("e1", s) for s in range(1, 151)]
        commits[130] = in_own_run("e1", 131, command_id="dup")
        assert await store.append(commits) == AppendReport(130, AppendFailure.DUPLICATE_COMMAND)
        return inserts.count, await seqs_stored(store, "e1", 150)


async def test_a_store_whose_server_fails_the_probe_sends_requests_of_100(
    db: Any, mongo_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def goes_on(_db: Any) -> bool:
        return False

    monkeypatch.setattr(mongo_event_store, "ordered_insert_stops_at_refusal", goes_on)
    with caplog.at_level(logging.INFO, logger=mongo_event_store.__name__):
        requests, stored = await requests_and_gap(db, mongo_url)
    # The locator and 99 commits, then the rest, refused at seq 131.
    assert requests == 2 and stored == list(range(1, 131))
    assert "requests of at most 100 documents" in caplog.text


async def test_a_store_whose_probe_fails_sends_requests_of_100(
    db: Any, mongo_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def refused(_db: Any) -> bool:
        raise OperationFailure("not authorized to create a collection", code=13)

    monkeypatch.setattr(mongo_event_store, "ordered_insert_stops_at_refusal", refused)
    with caplog.at_level(logging.INFO, logger=mongo_event_store.__name__):
        _, stored = await requests_and_gap(db, mongo_url)
    assert stored == list(range(1, 131))
    assert "the probe failed" in caplog.text


async def test_a_store_whose_server_passes_the_probe_sends_one_request(
    db: Any, mongo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=mongo_event_store.__name__):
        requests, stored = await requests_and_gap(db, mongo_url)
    assert requests == 1 and stored == list(range(1, 131))
    assert "one request per round" in caplog.text
