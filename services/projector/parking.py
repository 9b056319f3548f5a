"""Parked executions: those whose commits the projector could not apply.

A commit that a read model cannot take (a value MongoDB refuses, a document over its size
limit, a bug in the fold for one history) must not stop the projection of every other
execution in its partition. The projector then parks that one execution: it records it
in `parked_executions`, logs it, skips its events from then on, and tries again later by
folding its commits from the event store (after `RETRY_FIRST_SECONDS`, doubling up to
`RETRY_MAX_SECONDS`; at start and when partitions are assigned; at once after `runstore
projections retry`). Point reads are not affected: they fold the commits the read models
lack.

`{_id: execution_id, partition, seq, error, parked_at, attempts, retry_at}`; `partition` is
the `workflows.events` partition its events came from (None when a rebuild parked it):
only the projector owning that partition retries it, so each read-model document keeps a
single writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError

Document = dict[str, Any]

log = logging.getLogger(__name__)

PARKED = "parked_executions"
RETRY_FIRST_SECONDS = 60.0
RETRY_MAX_SECONDS = 3600.0
_ERROR_CHARS = 2000


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says the servers are unavailable (retry the batch) rather than that
    this data cannot be projected (park the execution)."""
    if isinstance(
        exc, ConnectionFailure | ExecutionTimeout | WTimeoutError | OSError | asyncio.TimeoutError
    ):
        return True
    if isinstance(exc, PyMongoError):
        return exc.timeout or exc.has_error_label("RetryableWriteError")
    return False


def _now() -> datetime:
    return datetime.now(UTC)


class ParkedExecutions:
    """The parked set, in `parked_executions` and mirrored in memory (`ids`)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._coll = db[PARKED]
        self.entries: dict[str, Document] = {}

    def is_parked(self, execution_id: str) -> bool:
        return execution_id in self.entries

    async def load(self) -> dict[str, Document]:
        """Read the parked set again (another process may have parked or asked for a
        retry); returns it."""
        self.entries = {str(d["_id"]): d async for d in self._coll.find({})}
        return self.entries

    async def park(
        self, execution_id: str, partition: int | None, seq: int, error: BaseException
    ) -> None:
        before = self.entries.get(execution_id)
        attempts = int(before["attempts"]) + 1 if before else 1
        wait = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (attempts - 1))
        now = _now()
        doc = {
            "_id": execution_id,
            "partition": partition if partition is not None else (before or {}).get("partition"),
            "seq": seq,
            "error": f"{type(error).__name__}: {error}"[:_ERROR_CHARS],
            "parked_at": (before or {}).get("parked_at", now),
            "attempts": attempts,
            "retry_at": now + timedelta(seconds=wait),
        }
        await self._coll.replace_one({"_id": execution_id}, doc, upsert=True)
        self.entries[execution_id] = doc
        log.error(
            "PARKED execution %s at seq %s (attempt %d, next retry in %.0fs): %s; %d parked",
            execution_id,
            seq,
            attempts,
            wait,
            doc["error"],
            len(self.entries),
        )

    async def unpark(self, execution_id: str) -> None:
        await self._coll.delete_one({"_id": execution_id})
        self.entries.pop(execution_id, None)
        log.warning("unparked execution %s: projected; %d parked", execution_id, len(self.entries))

    def due(self, owned: Collection[int]) -> list[str]:
        """Parked executions this projector may retry now: due, and in a partition it owns
        (or parked by a rebuild, owner unknown)."""
        now = _now()
        return [
            x
            for x, d in self.entries.items()
            if (d.get("partition") is None or d["partition"] in owned)
            and _aware(d["retry_at"]) <= now
        ]

    async def clear(self) -> None:
        await self._coll.delete_many({})
        self.entries = {}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def parked_executions(db: AsyncDatabase[Document]) -> list[Document]:
    """Every parked execution (for `runstore projections parked` and the status command)."""
    return [d async for d in db[PARKED].find({}).sort("_id", 1)]


async def parked_count(db: AsyncDatabase[Document]) -> int:
    """How many executions are parked (what an operator's status shows)."""
    return await db[PARKED].count_documents({})


async def request_retry(db: AsyncDatabase[Document], execution_ids: Collection[str] = ()) -> int:
    """Have the owning projectors retry these parked executions (all when none is named)
    at their next check; returns how many were asked for."""
    query: Document = {"_id": {"$in": list(execution_ids)}} if execution_ids else {}
    result = await db[PARKED].update_many(query, {"$set": {"retry_at": _now()}})
    return int(result.modified_count)
