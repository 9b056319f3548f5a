"""The local FerretDB wrapper (deploy/local/ferretdb): `_id` reads use one unique index
on FerretDB's pushdown expression, and `_id` stays unique."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.common.mongo import is_ferretdb
from tests.support.eventually import assert_eventually


async def test_id_reads_use_the_rebuilt_unique_index(mongo_db: AsyncDatabase[Any]) -> None:
    if not await is_ferretdb(mongo_db):
        pytest.skip("the wrapper's index fix is specific to the local FerretDB")
    coll = mongo_db["fresh"]
    await coll.insert_many([{"_id": f"k{i}", "n": i} for i in range(50)])

    async def planned_with_the_id_index() -> None:
        # A real read first: SQLite connections pick up a schema change when they
        # start a transaction, which EXPLAIN alone does not.
        assert await coll.find_one({"_id": "k7"}) == {"_id": "k7", "n": 7}
        plan = await mongo_db.command("explain", {"find": "fresh", "filter": {"_id": "k7"}})
        steps = " ".join(plan["queryPlanner"]["Plan"])
        assert "SEARCH" in steps and "USING INDEX" in steps and "__id_" in steps, steps

    await assert_eventually(planned_with_the_id_index)

    # Still unique, with MongoDB's error, after the rebuild.
    with pytest.raises(DuplicateKeyError):
        await coll.insert_one({"_id": "k7", "n": -1})
    assert await coll.count_documents({}) == 50


@pytest.mark.parametrize("refused_at", [10, 130])
async def test_an_ordered_insert_past_100_documents_stops_at_its_refused_one(
    mongo_db: AsyncDatabase[Any], refused_at: int
) -> None:
    # Upstream FerretDB 1.24.2 writes in transactions of 100 and went on with the next
    # hundred after a refusal (0-9 and 100-149 written for a duplicate at 10); the local
    # build is patched (deploy/local/ferretdb/01-ordered-insert.patch) to stop as MongoDB does.
    coll = mongo_db["ordered"]
    await coll.insert_one({"_id": refused_at})
    with pytest.raises(BulkWriteError) as raised:
        await coll.insert_many([{"_id": i} for i in range(150)], ordered=True)
    details = raised.value.details
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(refused_at, 11000)]
    assert details["nInserted"] == refused_at
    stored = sorted([d["_id"] async for d in coll.find({}, {"_id": 1})])
    assert stored == list(range(refused_at + 1))


async def test_an_ordered_insert_reports_only_its_first_refused_document(
    mongo_db: AsyncDatabase[Any],
) -> None:
    # A document FerretDB cannot store (a `$` key) after a duplicate in the same hundred:
    # the insert ends at the duplicate, so the later document is never reached (upstream
    # 1.24.2 reported both).
    coll = mongo_db["ordered_invalid"]
    await coll.insert_one({"_id": 10})
    docs: list[dict[str, Any]] = [{"_id": i} for i in range(60)]
    docs[50] = {"_id": 50, "$bad": 1}
    with pytest.raises(BulkWriteError) as raised:
        await coll.insert_many(docs, ordered=True)
    assert [e["index"] for e in raised.value.details["writeErrors"]] == [10]
    assert await coll.count_documents({}) == 11


@pytest.mark.parametrize("refused_at", [0, 999, 1000, 1001, 1850, 2499])
async def test_an_ordered_insert_past_one_transaction_stops_at_its_refused_document(
    mongo_db: AsyncDatabase[Any], refused_at: int
) -> None:
    # The local build writes an insert in transactions of 1,000 documents and retries a
    # refused one a hundred at a time (02-insert-transactions.patch): what is written and
    # reported is still what MongoDB writes and reports.
    coll = mongo_db["ordered_long"]
    await coll.insert_one({"_id": -1, "k": refused_at})
    docs = [{"_id": i, "k": i} for i in range(2500)]
    docs[refused_at] = {"_id": -1}
    with pytest.raises(BulkWriteError) as raised:
        await coll.insert_many(docs, ordered=True)
    assert [e["index"] for e in raised.value.details["writeErrors"]] == [refused_at]
    assert raised.value.details["nInserted"] == refused_at
    assert await coll.count_documents({}) == refused_at + 1


async def test_an_unordered_insert_past_one_transaction_writes_all_but_its_refused_ones(
    mongo_db: AsyncDatabase[Any],
) -> None:
    coll = mongo_db["unordered_long"]
    await coll.insert_many([{"_id": 5}, {"_id": 1100}, {"_id": 2400}])
    with pytest.raises(BulkWriteError) as raised:
        await coll.insert_many([{"_id": i} for i in range(2500)], ordered=False)
    assert [e["index"] for e in raised.value.details["writeErrors"]] == [5, 1100, 2400]
    assert raised.value.details["nInserted"] == 2497
    assert await coll.count_documents({}) == 2500
