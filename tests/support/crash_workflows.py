"""The workflows of the worker crash tests (served by `runstore worker --module
tests.support.crash_workflows`): 50 activities in a row, each writing its side effect into
MongoDB under the attempt's idempotency key and logging every execution of its body; and
one activity held until a file exists (a long activity, for as long as a test wants)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from runstore.workflows import RetryPolicy, activity, workflow
from services.common.settings import RunstoreSettings

_client: AsyncMongoClient[dict[str, Any]] | None = None


def _db() -> Any:
    global _client
    settings = RunstoreSettings()
    if _client is None:
        _client = AsyncMongoClient(settings.mongo_url)
    return _client[settings.mongo_database]


# An attempt whose worker was killed is timed out by its deadline (start-to-close + 2 s)
# and retried: kept short so 20 kills fit the test; no limit on attempts.
@activity(
    start_to_close_timeout=timedelta(seconds=3),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.5), maximum_attempts=0),
)
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


@activity
async def held_until(gate: str) -> str:
    """Runs until the file `gate` exists (heartbeating); its start is logged in MongoDB."""
    info = activity.info()
    await _db()["held_started"].insert_one({"_id": uuid.uuid4().hex, "key": info.idempotency_key})
    while not await asyncio.to_thread(Path(gate).exists):
        activity.heartbeat()
        await asyncio.sleep(0.05)
    return f"released {info.activity_id}"


@workflow.define(name="held")
class Held:
    @workflow.run
    async def run(self, gate: str) -> str:
        return str(await held_until(gate))
