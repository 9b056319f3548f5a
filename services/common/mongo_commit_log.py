"""CommitLog on MongoDB / FerretDB: `_id` point reads, and one sorted scan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pymongo.asynchronous.database import AsyncDatabase

from schemas.commits import Commit
from services.common.commit_log import (
    COMMITS,
    LEGACY_RUN_LOCATORS,
    Document,
    commit_from_doc,
    is_commit_doc,
    read_commit,
    run_locator_id,
)
from services.common.mongo import POINT_READ_CONCURRENCY

_SCAN_BATCH = 1000


class MongoCommitLog:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._commits = db[COMMITS]
        self._legacy_run_locators = db[LEGACY_RUN_LOCATORS]

    async def get(self, execution_id: str, seq: int) -> Commit | None:
        return await read_commit(self._commits, execution_id, seq)

    async def read_after(
        self, execution_id: str, after_seq: int, limit: int | None = None
    ) -> list[Commit]:
        # Reads go out in concurrent windows. Without a limit the caller usually expects
        # none (a point read checking whether the projector is behind): start with one
        # read and double. With a limit the caller knows they exist (a gap): all at once.
        found: list[Commit] = []
        window = 1 if limit is None else min(limit, POINT_READ_CONCURRENCY)
        while limit is None or len(found) < limit:
            start = after_seq + len(found) + 1
            size = window if limit is None else min(window, limit - len(found))
            batch = await asyncio.gather(
                *(self.get(execution_id, s) for s in range(start, start + size))
            )
            for commit in batch:
                if commit is None:
                    return found
                found.append(commit)
            window = min(window * 2, POINT_READ_CONCURRENCY)
        return found

    async def scan(self) -> AsyncIterator[Commit]:
        # (FerretDB sorts the whole collection in memory for this.)
        cursor = self._commits.find({}, batch_size=_SCAN_BATCH).sort("_id", 1)
        async for doc in cursor:
            if is_commit_doc(doc):  # not a run locator
                yield commit_from_doc(doc)

    async def count(self) -> int:
        # The run locators are counted too: about 1.5 documents per commit at most.
        return await self._commits.estimated_document_count()

    async def locate_run(self, run_id: str) -> str | None:
        doc = await self._commits.find_one({"_id": run_locator_id(run_id)}, {"run_of": 1})
        if doc is not None:
            return str(doc["run_of"])
        # A run opened by an engine that wrote its locators to a collection of their own.
        legacy = await self._legacy_run_locators.find_one({"_id": run_id})
        return str(legacy["execution_id"]) if legacy else None
