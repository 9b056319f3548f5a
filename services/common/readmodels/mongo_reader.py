"""ReadModelReader on MongoDB / FerretDB: `_id` reads, and the run list compiled into one
keyset query per segment of its sort order (run_query.py)."""

from __future__ import annotations

from collections.abc import Collection

from pymongo.asynchronous.database import AsyncDatabase

from services.common.mongo import ServerKind
from services.common.readmodels import run_query
from services.common.readmodels.mongo_store import load_by_ids
from services.common.readmodels.reader import LIST_FIELDS
from services.common.readmodels.run_filter import Cursor, RunFilter
from services.common.readmodels.store import RUNS, Document

_LIST_PROJECTION = dict.fromkeys(LIST_FIELDS, 1)


class MongoReadModelReader:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._server = ServerKind(db)

    async def get(
        self, collection: str, doc_id: str, *, without: Collection[str] = ()
    ) -> Document | None:
        projection = dict.fromkeys(without, False) or None
        return await self._db[collection].find_one({"_id": doc_id}, projection)

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        return await load_by_ids(self._db[collection], ids, await self._server.ferretdb())

    async def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        rows: list[Document] = []
        sort = run_query.sort(flt)
        for query in run_query.page_queries(flt, after):
            if len(rows) >= limit:
                break
            cursor = self._db[RUNS].find(query, _LIST_PROJECTION).sort(sort)
            rows += await cursor.limit(limit - len(rows)).to_list()
        return rows
