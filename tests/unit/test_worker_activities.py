"""How the worker runs one activity attempt: timeouts, heartbeats, the idempotency key."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from runstore.workflows import activity
from runstore.workflows._activities import ActivityTimeoutError, run_activity
from runstore.workflows._instance import ActivityRequest

SEEN: list[str] = []


@activity
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@activity
async def beating(rounds: int) -> str:
    for _ in range(rounds):
        await asyncio.sleep(0.05)
        activity.heartbeat()
    return "alive"


@activity
async def silent(_: Any) -> str:
    await asyncio.sleep(1.0)
    return "never"


@activity
async def keyed(_: Any) -> str:
    SEEN.append(activity.info().idempotency_key)
    return "ok"


def _request(fn: Any, arg: Any, **timeouts: timedelta | None) -> ActivityRequest:
    return ActivityRequest(
        activity_id="a1",
        definition=fn.definition,
        args=(arg,),
        kwargs={},
        attempt=2,
        start_to_close_timeout=timeouts.get("start_to_close"),
        heartbeat_timeout=timeouts.get("heartbeat"),
    )


INSTANCE: Any = SimpleNamespace(execution_id="e-1", run_id="r-1", workflow_name="wf")


async def test_an_attempt_over_its_start_to_close_timeout_fails_with_a_timeout() -> None:
    request = _request(slow, 1.0, start_to_close=timedelta(seconds=0.1))
    result, error = await run_activity(INSTANCE, request)
    assert result is None
    assert isinstance(error, ActivityTimeoutError)
    assert "start_to_close" in str(error)


async def test_heartbeats_keep_a_long_attempt_alive_and_silence_times_it_out() -> None:
    alive = _request(beating, 8, heartbeat=timedelta(seconds=0.2))
    assert await run_activity(INSTANCE, alive) == ("alive", None)
    quiet = _request(silent, None, heartbeat=timedelta(seconds=0.1))
    result, error = await run_activity(INSTANCE, quiet)
    assert result is None
    assert isinstance(error, ActivityTimeoutError)
    assert "heartbeat" in str(error)


async def test_an_attempt_sees_its_idempotency_key_and_errors_come_back_as_values() -> None:
    SEEN.clear()
    assert await run_activity(INSTANCE, _request(keyed, None)) == ("ok", None)
    assert SEEN == ["e-1:a1:2"]
    result, error = await run_activity(INSTANCE, _request(slow, "not a number"))
    assert result is None
    assert isinstance(error, TypeError)
