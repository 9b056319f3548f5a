"""EventStore on MongoDB (or FerretDB): commits are inserts, `_id` reads are the hot path.

`commits`: `_id` = `{execution_id}:{seq:012d}`, unique index on `command_id`.

The write path never updates a document: appends are inserts, and the unique `_id`
and `command_id` indexes are the concurrency and idempotency guards. Finding an
execution's newest commit needs no head document either: its seqs are contiguous from
1, so galloping `_id` probes (1, 2, 4, 8, … then a binary search) find the last one in
O(log n) point reads, which stay fast on FerretDB (it scans for anything but `_id`).
Reads by position go through `MongoCommitLog`, the read port every reader of commits uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from schemas.commits import Commit, commit_id
from schemas.events import EventType
from services.common.commit_log import (
    COMMITS,
    RUN_LOCATORS,
    CommitLog,
    commit_from_doc,
    commit_to_doc,
)
from services.common.mongo import (
    DUPLICATE_KEY,
    POINT_READ_CONCURRENCY,
    Document,
    insert_unless_present,
    is_ferretdb,
)
from services.common.mongo_commit_log import MongoCommitLog
from services.engine.event_store import (
    AppendFailure,
    AppendReport,
    RoundReport,
    append_round_with,
)

# Most commits `find_by_commands` reads by `_id` on FerretDB before it scans instead.
_PROBE_LIMIT = 256


class MongoEventStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._commits = db[COMMITS]
        # Reads of stored commits by position go through the read port every reader uses.
        self._log: CommitLog = MongoCommitLog(db)
        self._run_locators = db[RUN_LOCATORS]
        self._ferretdb = False

    async def setup(self) -> None:
        self._ferretdb = await is_ferretdb(self._db)
        await self._commits.create_index("command_id", unique=True, name="command_id_unique")

    async def latest(self, execution_ids: Collection[str]) -> dict[str, Commit]:
        gate = asyncio.Semaphore(POINT_READ_CONCURRENCY)

        async def one(execution_id: str) -> tuple[str, Commit | None]:
            async with gate:
                return execution_id, await self._latest_one(execution_id)

        found = await asyncio.gather(*(one(e) for e in execution_ids))
        return {e: c for e, c in found if c is not None}

    async def _latest_one(self, execution_id: str) -> Commit | None:
        newest = await self.get(execution_id, 1)
        if newest is None:
            return None
        # Gallop: double the probe until a seq is missing; the last commit lies between.
        low, high = 1, 2
        while (found := await self.get(execution_id, high)) is not None:
            newest, low, high = found, high, high * 2
        # Binary search in (low, high): low exists, high does not.
        while high - low > 1:
            middle = (low + high) // 2
            found = await self.get(execution_id, middle)
            if found is None:
                high = middle
            else:
                newest, low = found, middle
        return newest

    async def append(self, commits: Sequence[Commit]) -> AppendReport:
        if not commits:
            return AppendReport(inserted=0)
        await self._locate_new_runs(commits)
        docs = [commit_to_doc(c) for c in commits]
        try:
            await self._commits.insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            first = errors[0] if errors else {}
            index = int(first.get("index") or exc.details.get("nInserted") or 0)
            if first.get("code") != DUPLICATE_KEY:
                raise
            return AppendReport(inserted=index, failure=await self._classify(commits[index]))
        return AppendReport(inserted=len(commits))

    async def append_first(self, commits: Sequence[Commit]) -> set[int]:
        if not commits:
            return set()
        if later := [c.doc_id for c in commits if c.seq != 1]:
            raise ValueError(f"append_first takes first commits only, not {later}")
        await self._locate_new_runs(commits)
        return await insert_unless_present(self._commits, [commit_to_doc(c) for c in commits])

    async def append_round(self, firsts: Sequence[Commit], rest: Sequence[Commit]) -> RoundReport:
        return await append_round_with(self, firsts, rest)

    async def _locate_new_runs(self, commits: Sequence[Commit]) -> None:
        # Before the commits: a locator whose commit never lands names a run nobody knows,
        # which reads as "not found" anyway; the reverse would hide a stored run.
        locators = {
            e.run_id: {"_id": e.run_id, "execution_id": e.execution_id}
            for c in commits
            for e in c.events
            if e.type is EventType.WORKFLOW_EXECUTION_STARTED
        }
        # Refusals are locators already there from an earlier attempt: fine.
        await insert_unless_present(self._run_locators, list(locators.values()))

    async def _classify(self, commit: Commit) -> AppendFailure:
        # FerretDB's duplicate-key message does not name the index, so ask the data.
        stored = await self._commits.find_one({"_id": commit.doc_id}, {"command_id": 1})
        if stored is not None and stored["command_id"] != commit.command_id:
            return AppendFailure.CONFLICT
        return AppendFailure.DUPLICATE_COMMAND

    async def get(self, execution_id: str, seq: int) -> Commit | None:
        return await self._log.get(execution_id, seq)

    async def find_by_command(self, command_id: str) -> Commit | None:
        doc = await self._commits.find_one({"command_id": command_id})
        return commit_from_doc(doc) if doc else None

    async def find_by_commands(
        self, command_ids: Collection[str], streams: Mapping[str, int] | None = None
    ) -> dict[str, Commit]:
        if not command_ids:
            return {}
        if streams is not None and self._ferretdb and sum(streams.values()) <= _PROBE_LIMIT:
            # FerretDB answers a command_id query with a scan of every commit; reading
            # the few streams the commands belong to by `_id` costs a few ms instead.
            return await self._find_in_streams(set(command_ids), streams)
        cursor = self._commits.find({"command_id": {"$in": list(command_ids)}})
        return {c.command_id: c for c in map(commit_from_doc, await cursor.to_list())}

    async def _find_in_streams(
        self, command_ids: set[str], streams: Mapping[str, int]
    ) -> dict[str, Commit]:
        gate = asyncio.Semaphore(POINT_READ_CONCURRENCY)

        async def command_at(doc_id: str) -> tuple[str, Any]:
            async with gate:
                doc = await self._commits.find_one({"_id": doc_id}, {"command_id": 1})
            return doc_id, doc and doc.get("command_id")

        ids = [commit_id(e, seq) for e, newest in streams.items() for seq in range(1, newest + 1)]
        found = await asyncio.gather(*(command_at(i) for i in ids))
        matches = [doc_id for doc_id, command_id in found if command_id in command_ids]
        docs = await asyncio.gather(*(self._commits.find_one({"_id": i}) for i in matches))
        return {c.command_id: c for c in (commit_from_doc(d) for d in docs if d)}

    async def read_stream(self, execution_id: str, after_seq: int = 0) -> AsyncIterator[Commit]:
        for commit in await self._log.read_after(execution_id, max(after_seq, 0)):
            yield commit
