"""EventStore on MongoDB (or FerretDB): commits are inserts, `_id` reads are the hot path.

`commits`: `_id` = `{execution_id}:{seq:012d}`, unique index on `command_id`; beside the
commits, one run locator per run (`run_locators` in services/common/commit_log.py).

A batch's writes are one insert request when nothing in it is refused: the locators of
the runs it opens, the first commits of executions believed new, then the other commits
(`append_round`). A write request costs FerretDB about a millisecond of CPU whatever it
holds, and at a few commands per batch (a worker's workflows) this was three requests.
That needs a server whose ordered insert stops at its first refused document, which
`setup` probes (MongoDB and the local, patched FerretDB do; a request then holds up to
the probe's 4,096 documents, more than a round's); on any other server, or with the probe
turned off, a request holds at most 100 documents (`FERRETDB_INSERT_BATCH`).

The write path never updates a document: appends are inserts, and the unique `_id`
and `command_id` indexes are the concurrency and idempotency guards. Finding an
execution's newest commit needs no head document either: its seqs are contiguous from
1, so galloping `_id` probes (1, 2, 4, 8, … then a binary search) find the last one in
O(log n) point reads, which stay fast on FerretDB (it scans for anything but `_id`).
Reads by position go through `MongoCommitLog`, the read port every reader of commits uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from schemas.commits import Commit, commit_id
from services.common.commit_log import (
    COMMITS,
    CommitLog,
    commit_from_doc,
    commit_to_doc,
    newest_commit,
    run_locators,
)
from services.common.metrics import STORE_LATENCY
from services.common.mongo import (
    DUPLICATE_KEY,
    ORDERED_PROBE_DOCS,
    POINT_READ_CONCURRENCY,
    Document,
    ServerKind,
    insert_unless_present,
    ordered_insert_stops_at_refusal,
)
from services.common.mongo_commit_log import MongoCommitLog
from services.engine.event_store import (
    AppendFailure,
    AppendReport,
    RoundReport,
)

log = logging.getLogger(__name__)
_STORE_LATENCY = STORE_LATENCY.labels("engine")

# Most commits `find_by_commands` reads by `_id` on FerretDB before it scans instead.
_PROBE_LIMIT = 256

FERRETDB_INSERT_BATCH = 100
"""Most documents per ordered insert request on a server whose ordered insert does not
stop at a refused document past 100 (`ordered_insert_stops_at_refusal` says no: upstream
FerretDB), or when the probe is turned off.

FerretDB v1 writes an insert's documents in transactions of 100 (its `--batch-size`
default, and fixed when embedded as deploy/local/ferretdb does). When one of them is
refused, an ordered insert stops inside those 100 but then goes on with the next
hundred: its handler's `break` leaves only the per-document retry loop (FerretDB
v1.24.2 internal/handler/msg_insert.go). A commit refused early in a round of more than
100 documents thus let later commits of the same execution in, a gap in its seqs
(docs/engine-performance.md, "2026-12-06: a gap after a refused commit"). Requests of
at most 100 documents each stop where they should, and the next is not sent. (A FerretDB
run with a smaller `--batch-size` would need this lowered to match.) The local build
patches that `break` (deploy/local/ferretdb/01-ordered-insert.patch) and passes the probe."""


class MongoEventStore:
    def __init__(
        self, db: AsyncDatabase[Document], compact: bool = True, probe_ordered: bool = True
    ) -> None:
        """`compact`: commit bodies in the compact layout (`commit_to_doc`).
        `probe_ordered`: probe whether a round can be one insert request (else, requests
        of `FERRETDB_INSERT_BATCH` documents on every server)."""
        self._db = db
        self._compact = compact
        self._commits = db[COMMITS]
        # Reads of stored commits by position go through the read port every reader uses.
        self._log: CommitLog = MongoCommitLog(db)
        self._server = ServerKind(db)
        self._probe_ordered = probe_ordered
        # Most documents per ordered insert request (None: not probed yet): probed in
        # `setup`, or on first use, since the ordered insert depends on it.
        self._request_max: int | None = None
        self._probing = asyncio.Lock()

    def _doc(self, commit: Commit) -> Document:
        return commit_to_doc(commit, self._compact)

    async def setup(self) -> None:
        await self._server.ferretdb()
        await self._ordered_request_max()
        await self._commits.create_index("command_id", unique=True, name="command_id_unique")

    async def _ordered_request_max(self) -> int:
        """Most documents per ordered insert request (the probe's size when it passes)."""
        if self._request_max is None:
            async with self._probing:
                if self._request_max is None:
                    self._request_max = await self._choose_request_max()
        return self._request_max

    async def _choose_request_max(self) -> int:
        if not self._probe_ordered:
            log.info(
                "ordered inserts: requests of at most %d documents (probe turned off)",
                FERRETDB_INSERT_BATCH,
            )
            return FERRETDB_INSERT_BATCH
        try:
            stops = await ordered_insert_stops_at_refusal(self._db)
        except PyMongoError:
            # E.g. a user without the right to create a collection: the safe mode is
            # correct on every server.
            log.warning(
                "ordered inserts: requests of at most %d documents: the probe failed",
                FERRETDB_INSERT_BATCH,
                exc_info=True,
            )
            return FERRETDB_INSERT_BATCH
        if stops:
            log.info(
                "ordered inserts: requests of up to %d documents, a round's (the server stops "
                "at a refusal)",
                ORDERED_PROBE_DOCS,
            )
            return ORDERED_PROBE_DOCS
        log.warning(
            "ordered inserts: requests of at most %d documents: this server goes on past a "
            "refused document (an unpatched FerretDB? see docs/local-store.md)",
            FERRETDB_INSERT_BATCH,
        )
        return FERRETDB_INSERT_BATCH

    async def latest(self, execution_ids: Collection[str]) -> dict[str, Commit]:
        gate = asyncio.Semaphore(POINT_READ_CONCURRENCY)

        async def one(execution_id: str) -> tuple[str, Commit | None]:
            async with gate:
                return execution_id, await newest_commit(self.get, execution_id)

        found = await asyncio.gather(*(one(e) for e in execution_ids))
        return {e: c for e, c in found if c is not None}

    async def append(self, commits: Sequence[Commit]) -> AppendReport:
        if not commits:
            return AppendReport(inserted=0)
        return (await self._write_round([], commits)).report

    async def append_first(self, commits: Sequence[Commit]) -> set[int]:
        if not commits:
            return set()
        return (await self._write_round(commits, [])).refused

    async def append_round(self, firsts: Sequence[Commit], rest: Sequence[Commit]) -> RoundReport:
        return await self._write_round(firsts, rest)

    async def _write_round(self, firsts: Sequence[Commit], rest: Sequence[Commit]) -> RoundReport:
        with _STORE_LATENCY.time():
            return await self._insert_round(firsts, rest)

    async def _insert_round(self, firsts: Sequence[Commit], rest: Sequence[Commit]) -> RoundReport:
        """`append_round` in one insert request when nothing is refused (one per
        `FERRETDB_INSERT_BATCH` documents on a server that failed the probe): the run locators,
        then the first commits, then the rest, in that order (a locator before the commit
        that opens its run; a first commit before the later commits of its execution).

        An ordered insert stops at its first refused document; only then do the remaining
        documents go as `append_round_with` would send them (locators and first commits
        independently of each other, the rest in order), so a refusal costs one or two
        more requests and never changes what is written.
        """
        if later := [c.doc_id for c in firsts if c.seq != 1]:
            raise ValueError(f"append_first takes first commits only, not {later}")
        locators = run_locators([*firsts, *rest])
        docs = [*locators, *(self._doc(c) for c in firsts), *(self._doc(c) for c in rest)]
        if not docs:
            return RoundReport(set(), [], AppendReport(inserted=0))
        stopped = await self._insert_ordered(docs)
        if stopped is None:
            return RoundReport(set(), list(rest), AppendReport(inserted=len(rest)))
        at_first = stopped - len(locators)
        if at_first < 0:
            # A locator is there already (a retry): the rest of them may be too.
            await insert_unless_present(self._commits, locators[stopped + 1 :])
            return await self._write_remainder(firsts, 0, set(), rest)
        if at_first < len(firsts):
            return await self._write_remainder(firsts, at_first + 1, {at_first}, rest)
        at = at_first - len(firsts)
        return RoundReport(set(), list(rest), AppendReport(at, await self._classify(rest[at])))

    async def _write_remainder(
        self, firsts: Sequence[Commit], start: int, refused: set[int], rest: Sequence[Commit]
    ) -> RoundReport:
        """After the round's request stopped before `firsts[start]`: those first commits,
        each independently, then the rest of the executions none of whose first commits
        was refused (`refused`: positions already refused)."""
        tail = [self._doc(c) for c in firsts[start:]]
        refused = refused | {start + p for p in await insert_unless_present(self._commits, tail)}
        refused_executions = {firsts[p].execution_id for p in refused}
        appended = [c for c in rest if c.execution_id not in refused_executions]
        stopped = await self._insert_ordered([self._doc(c) for c in appended])
        if stopped is None:
            return RoundReport(refused, appended, AppendReport(inserted=len(appended)))
        failure = await self._classify(appended[stopped])
        return RoundReport(refused, appended, AppendReport(stopped, failure))

    async def _insert_ordered(self, docs: Sequence[Document]) -> int | None:
        """Insert `docs` in order; the position of the one refused as a duplicate (the
        insert stopped there: nothing after it is written), or None when all went in.
        Any other error is raised. One request, or requests of `_ordered_request_max`."""
        if not docs:
            return None
        step = await self._ordered_request_max()
        for start in range(0, len(docs), step):
            stopped = await self._insert_request(docs[start : start + step])
            if stopped is not None:
                return start + stopped
        return None

    async def _insert_request(self, docs: Sequence[Document]) -> int | None:
        """One ordered insert request: `_insert_ordered` of at most one server batch."""
        try:
            await self._commits.insert_many(list(docs), ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if (
                not errors
                or errors[0].get("code") != DUPLICATE_KEY
                or exc.details.get("writeConcernErrors")
            ):
                raise
            # The refused document's own index, not `nInserted`: that counts whatever a
            # server wrote past it.
            return int(errors[0]["index"])
        return None

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
        if (
            streams is not None
            and sum(streams.values()) <= _PROBE_LIMIT
            and await self._server.ferretdb()
        ):
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
