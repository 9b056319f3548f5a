"""The durable side of the pending timers: a port, its MongoDB adapter and an in-memory one
(held to the same contract suite, tests/contract/test_timer_store.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from pymongo import ASCENDING, DeleteOne
from pymongo.asynchronous.database import AsyncDatabase

from schemas.timers import Timer
from services.common.mongo import insert_unless_present
from services.timers.pending import Placed

Document = dict[str, Any]
_BULK = 100


class TimerStore(Protocol):
    async def setup(self) -> None: ...

    async def load(self, partitions: Iterable[int]) -> dict[int, list[Timer]]:
        """Every stored timer of these partitions (once per assignment, never per tick)."""
        ...

    async def write(self, put: Iterable[Placed], delete: Iterable[str]) -> None:
        """Upsert `put` and delete the timers of `delete` (keys); idempotent."""
        ...

    async def count(self) -> int:
        """Timers stored (all partitions)."""
        ...


class MongoTimerStore:
    """Collection `timers`: one document per pending timer, `_id` = the timer's key
    (`{execution_id}:{run_id}:{timer_id}`), with its events partition.

    Writes are `_id` upserts and deletes, each document written only by the owner of its
    partition. The one filtered read is `load` at assignment: `{partition: {$in: …}}`,
    served by the `(partition, fire_at_ns)` index on MongoDB and a scan on FerretDB (once
    per rebalance, see docs/timers.md)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._coll = db["timers"]

    async def setup(self) -> None:
        await self._coll.create_index(
            [("partition", ASCENDING), ("fire_at_ns", ASCENDING)], name="partition_fire_at"
        )

    async def load(self, partitions: Iterable[int]) -> dict[int, list[Timer]]:
        wanted = sorted(set(partitions))
        found: dict[int, list[Timer]] = {p: [] for p in wanted}
        if not wanted:
            return found
        async for doc in self._coll.find({"partition": {"$in": wanted}}):
            found[int(doc["partition"])].append(Timer.model_validate(doc["timer"]))
        return found

    async def write(self, put: Iterable[Placed], delete: Iterable[str]) -> None:
        docs = [
            {
                "_id": p.timer.key,
                "partition": p.partition,
                "fire_at_ns": p.timer.fire_at_ns,
                "timer": p.timer.model_dump(mode="json"),
            }
            for p in put
        ]
        # Most timers are new: one insert; the few whose key exists (a re-armed timer, a
        # re-delivered event) are replaced one by one.
        for position in await insert_unless_present(self._coll, docs):
            doc = docs[position]
            await self._coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        keys = list(delete)
        # Deletes by `_id` (a point each; `$in` would scan on FerretDB), in bounded bulks:
        # FerretDB slows down super-linearly with the statements of one command.
        for start in range(0, len(keys), _BULK):
            ops = [DeleteOne({"_id": key}) for key in keys[start : start + _BULK]]
            await self._coll.bulk_write(ops, ordered=False)

    async def count(self) -> int:
        return await self._coll.count_documents({})


class MemoryTimerStore:
    """TimerStore in a dict, for unit tests of the timers service."""

    def __init__(self) -> None:
        self._placed: dict[str, Placed] = {}

    async def setup(self) -> None:
        return None

    async def load(self, partitions: Iterable[int]) -> dict[int, list[Timer]]:
        found: dict[int, list[Timer]] = {p: [] for p in sorted(set(partitions))}
        for placed in self._placed.values():
            if placed.partition in found:
                found[placed.partition].append(placed.timer)
        return found

    async def write(self, put: Iterable[Placed], delete: Iterable[str]) -> None:
        for placed in put:
            self._placed[placed.timer.key] = placed
        for key in delete:
            self._placed.pop(key, None)

    async def count(self) -> int:
        return len(self._placed)
