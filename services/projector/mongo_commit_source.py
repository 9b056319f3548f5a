"""CommitSource on MongoDB / FerretDB: `_id` point reads and one sorted scan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from schemas.commits import Commit
from services.common.commit_log import COMMITS, commit_from_doc, read_commit

Document = dict[str, Any]

_SCAN_BATCH = 1000
# Concurrent point reads when filling a gap: enough to hide round trips, few enough for
# the pool.
_READ_CONCURRENCY = 32


class MongoCommitSource:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._commits = db[COMMITS]

    async def read(self, execution_id: str, seqs: Sequence[int]) -> list[Commit]:
        gate = asyncio.Semaphore(_READ_CONCURRENCY)

        async def one(seq: int) -> Commit | None:
            async with gate:
                return await read_commit(self._commits, execution_id, seq)

        found = await asyncio.gather(*(one(s) for s in seqs))
        return sorted((c for c in found if c is not None), key=lambda c: c.seq)

    async def scan(self) -> AsyncIterator[Commit]:
        # `_id` is `{execution_id}:{seq:012d}`, so `_id` order is seq order within an
        # execution. (FerretDB sorts the whole collection in memory for this.)
        cursor = self._commits.find({}, batch_size=_SCAN_BATCH).sort("_id", 1)
        async for doc in cursor:
            yield commit_from_doc(doc)

    async def count(self) -> int:
        return await self._commits.estimated_document_count()
