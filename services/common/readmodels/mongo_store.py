"""ReadModelStore on MongoDB / FerretDB: `_id` point reads, bulk replaces and inserts."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from pymongo import ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.common.mongo import POINT_READ_CONCURRENCY, ServerKind, insert_unless_present
from services.common.readmodels.indexes import declared_indexes
from services.common.readmodels.store import READ_MODELS, Document

# MongoDB serves `{_id: {$in: [...]}}` from the `_id` index in one round trip; FerretDB
# answers `$in` with a full scan but `{_id: v}` from the index our wrapper adds, so there
# the reads are concurrent point reads.
_IN_BATCH = 1000
# FerretDB slows down super-linearly with the statements of one bulk update; in chunks
# of 10 it stays linear (docs/read-models.md, "Measurements").
_FERRETDB_WRITE_CHUNK = 10
_MONGODB_WRITE_CHUNK = 1000
# Inserts have no such limit: FerretDB writes up to 100 documents per SQL statement.
_INSERT_CHUNK = 1000


class MongoReadModelStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._server = ServerKind(db)

    async def setup(self) -> None:
        if await self._server.ferretdb():
            # FerretDB (SQLite backend) answers every filter but `{_id: v}` with a full
            # scan and sorts in memory, so a secondary index never serves a read there;
            # it only costs writes (each run insert or replace updates every index).
            return
        for collection, indexes in declared_indexes().items():
            for index in indexes:
                await self._db[collection].create_index(list(index.keys), name=index.name)

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        return await load_by_ids(self._db[collection], ids, await self._server.ferretdb())

    async def save(self, collection: str, docs: Mapping[str, Document]) -> None:
        if not docs:
            return
        ops = [ReplaceOne({"_id": i}, d, upsert=True) for i, d in docs.items()]
        chunk = _FERRETDB_WRITE_CHUNK if await self._server.ferretdb() else _MONGODB_WRITE_CHUNK
        for k in range(0, len(ops), chunk):
            await self._db[collection].bulk_write(ops[k : k + chunk], ordered=False)

    async def insert(self, collection: str, docs: Mapping[str, Document]) -> None:
        if not docs:
            return
        await self._db[collection].insert_many(list(docs.values()), ordered=False)

    async def insert_new(self, collection: str, docs: Mapping[str, Document]) -> set[str]:
        # Unordered: a duplicate `_id` refuses that document only. On FerretDB an insert
        # is one multi-row SQL INSERT per 100 documents, where a replace costs a query
        # and an UPDATE per document.
        existing: set[str] = set()
        values = list(docs.values())
        for k in range(0, len(values), _INSERT_CHUNK):
            part = values[k : k + _INSERT_CHUNK]
            refused = await insert_unless_present(self._db[collection], part)
            existing.update(str(part[i]["_id"]) for i in refused)
        return existing

    async def drop_all(self) -> None:
        for name in READ_MODELS:
            await self._db[name].drop()

    async def snapshot(self, collection: str) -> dict[str, Document]:
        return {d["_id"]: d async for d in self._db[collection].find({})}


async def load_by_ids(
    coll: AsyncCollection[Document], ids: Collection[str], ferretdb: bool
) -> dict[str, Document]:
    """The documents among `ids`, by `_id` only (one `$in` on MongoDB, point reads on
    FerretDB)."""
    wanted = list(dict.fromkeys(ids))
    if len(wanted) > 1 and not ferretdb:
        out: dict[str, Document] = {}
        for k in range(0, len(wanted), _IN_BATCH):
            async for doc in coll.find({"_id": {"$in": wanted[k : k + _IN_BATCH]}}):
                out[doc["_id"]] = doc
        return out
    gate = asyncio.Semaphore(POINT_READ_CONCURRENCY)

    async def one(doc_id: str) -> Document | None:
        async with gate:
            return await coll.find_one({"_id": doc_id})

    found = await asyncio.gather(*(one(i) for i in wanted))
    return {d["_id"]: d for d in found if d is not None}
