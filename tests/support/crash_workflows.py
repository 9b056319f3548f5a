"""The workflow of the worker crash test (served by `runstore worker --module
tests.support.crash_workflows`): 50 activities in a row, each writing its side effect into
MongoDB under the attempt's idempotency key and logging every execution of its body."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from runstore.workflows import activity, workflow
from services.common.settings import RunstoreSettings

_client: AsyncMongoClient[dict[str, Any]] | None = None


def _db() -> Any:
    global _client
    settings = RunstoreSettings()
    if _client is None:
        _client = AsyncMongoClient(settings.mongo_url)
    return _client[settings.mongo_database]


@activity
async def apply_step(step: dict[str, Any]) -> int:
    info = activity.info()
    db = _db()
    # Every execution of the body, applied or not: shows the at-least-once delivery.
    await db["activity_bodies"].insert_one({"_id": uuid.uuid4().hex, "key": info.idempotency_key})
    await asyncio.sleep(0.1)
    # An attempt whose side effect is already applied (keyed by the attempt) applies nothing.
    with contextlib.suppress(DuplicateKeyError):
        await db["side_effects"].insert_one(
            {"_id": info.idempotency_key, "execution_id": info.execution_id, "n": step["n"]}
        )
    return int(step["n"]) * int(step["n"])


@workflow.define(name="crash-fifty")
class Fifty:
    @workflow.run
    async def run(self, count: int) -> dict[str, Any]:
        squares = [await apply_step({"n": n}) for n in range(count)]
        return {"sum": sum(squares), "squares": squares}
