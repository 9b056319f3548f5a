"""ReadModelStore on MongoDB / FerretDB: `_id` point reads, bulk replaces."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from pymongo import ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase

from services.common.readmodels.indexes import declared_indexes
from services.common.readmodels.store import Document

_READ_CONCURRENCY = 32


class MongoReadModelStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def setup(self) -> None:
        for collection, indexes in declared_indexes().items():
            for index in indexes:
                await self._db[collection].create_index(index.keys, name=index.name)

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        coll = self._db[collection]
        gate = asyncio.Semaphore(_READ_CONCURRENCY)

        async def one(doc_id: str) -> Document | None:
            async with gate:
                return await coll.find_one({"_id": doc_id})

        found = await asyncio.gather(*(one(i) for i in ids))
        return {d["_id"]: d for d in found if d is not None}

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        if not docs:
            return
        await self._db[collection].bulk_write(
            [ReplaceOne({"_id": i}, d, upsert=True) for i, d in docs.items()], ordered=False
        )

    async def drop_all(self) -> None:
        for name in ("runs", "executions", "history"):
            await self._db[name].drop()
