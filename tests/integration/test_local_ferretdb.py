"""The local FerretDB wrapper (deploy/local/ferretdb): `_id` reads use one unique index
on FerretDB's pushdown expression, and `_id` stays unique."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

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
