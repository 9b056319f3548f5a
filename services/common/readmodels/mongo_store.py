"""ReadModelStore on MongoDB / FerretDB: `_id` point reads, bulk replaces and inserts."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from pymongo import ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.common.readmodels.indexes import declared_indexes
from services.common.readmodels.store import READ_MODELS, Document

# Concurrent point reads per call: enough to hide round trips, few enough for the pool.
_READ_CONCURRENCY = 32
# From this many ids on, one `{_id: {$in: [...]}}` query replaces the point reads. MongoDB
# serves both from the `_id` index; FerretDB (SQLite) answers `{_id: v}` with a scan that
# stops at the match and `$in` with one slower full scan (about 12 point reads' worth), so
# for many ids the single scan wins there.
IN_QUERY_FROM = 16
_IN_BATCH = 1000


class MongoReadModelStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def setup(self) -> None:
        for collection, indexes in declared_indexes().items():
            for index in indexes:
                await self._db[collection].create_index(list(index.keys), name=index.name)

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        return await load_by_ids(self._db[collection], ids)

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        if not docs:
            return
        await self._db[collection].bulk_write(
            [ReplaceOne({"_id": i}, d, upsert=True) for i, d in docs.items()], ordered=False
        )

    async def insert(self, collection: str, docs: Mapping[str, Document]) -> None:
        if not docs:
            return
        await self._db[collection].insert_many(list(docs.values()), ordered=False)

    async def drop_all(self) -> None:
        for name in READ_MODELS:
            await self._db[name].drop()

    async def snapshot(self, collection: str) -> dict[str, Document]:
        return {d["_id"]: d async for d in self._db[collection].find({})}


async def load_by_ids(coll: AsyncCollection[Document], ids: Collection[str]) -> dict[str, Document]:
    """The documents among `ids`, read by `_id` only (point reads, or `$in` for many)."""
    wanted = list(dict.fromkeys(ids))
    if len(wanted) >= IN_QUERY_FROM:
        out: dict[str, Document] = {}
        for k in range(0, len(wanted), _IN_BATCH):
            async for doc in coll.find({"_id": {"$in": wanted[k : k + _IN_BATCH]}}):
                out[doc["_id"]] = doc
        return out
    gate = asyncio.Semaphore(_READ_CONCURRENCY)

    async def one(doc_id: str) -> Document | None:
        async with gate:
            return await coll.find_one({"_id": doc_id})

    found = await asyncio.gather(*(one(i) for i in wanted))
    return {d["_id"]: d for d in found if d is not None}
