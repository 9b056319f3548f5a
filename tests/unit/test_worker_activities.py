"""How the worker runs activity attempts: timeouts, heartbeats, the idempotency key, and
the executor (bounded concurrency, detached attempts reporting themselves once)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from runstore.workflows import ActivityInfo, activity
from runstore.workflows._activities import (
    ActivityExecutor,
    ActivityTimeoutError,
    Attempt,
    Outcome,
    WorkerStoppedError,
)
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


def _request(
    fn: Any, arg: Any, activity_id: str = "a1", **timeouts: timedelta | None
) -> ActivityRequest:
    return ActivityRequest(
        activity_id=activity_id,
        definition=fn.definition,
        args=(arg,),
        kwargs={},
        attempt=2,
        start_to_close_timeout=timeouts.get("start_to_close"),
        heartbeat_timeout=timeouts.get("heartbeat"),
    )


def _info(request: ActivityRequest) -> ActivityInfo:
    return ActivityInfo(
        execution_id="e-1",
        run_id="r-1",
        workflow_name="wf",
        activity_id=request.activity_id,
        activity_name=request.definition.name,
        attempt=request.attempt,
    )


async def run_activity(request: ActivityRequest) -> Outcome:
    return await ActivityExecutor(4).start(_info(request), request).task


async def test_an_attempt_over_its_start_to_close_timeout_fails_with_a_timeout() -> None:
    request = _request(slow, 1.0, start_to_close=timedelta(seconds=0.1))
    result, error = await run_activity(request)
    assert result is None
    assert isinstance(error, ActivityTimeoutError)
    assert "start_to_close" in str(error)


RELEASE = asyncio.Event()


@activity
async def stubborn(_: Any) -> str:
    """Swallows its cancellation and goes on until released (a cleanup or a retry loop)."""
    try:
        await RELEASE.wait()
    except asyncio.CancelledError:
        await RELEASE.wait()
    return "late"


async def test_a_body_that_swallows_its_cancellation_still_times_out_its_attempt() -> None:
    # The attempt's outcome (and its concurrency slot) must not wait for the body: the body
    # below would run until released. The guard only turns a hang into a failure.
    RELEASE.clear()
    request = _request(stubborn, None, start_to_close=timedelta(seconds=0.05))
    attempt = asyncio.ensure_future(run_activity(request))
    try:
        done, _ = await asyncio.wait({attempt}, timeout=10)
    finally:
        RELEASE.set()
    assert done, "the attempt's outcome waited for its body"
    result, error = attempt.result()
    assert result is None
    assert isinstance(error, ActivityTimeoutError)


async def test_heartbeats_keep_a_long_attempt_alive_and_silence_times_it_out() -> None:
    alive = _request(beating, 8, heartbeat=timedelta(seconds=0.2))
    assert await run_activity(alive) == ("alive", None)
    quiet = _request(silent, None, heartbeat=timedelta(seconds=0.1))
    result, error = await run_activity(quiet)
    assert result is None
    assert isinstance(error, ActivityTimeoutError)
    assert "heartbeat" in str(error)


async def test_an_attempt_sees_its_idempotency_key_and_errors_come_back_as_values() -> None:
    SEEN.clear()
    assert await run_activity(_request(keyed, None)) == ("ok", None)
    assert SEEN == ["e-1:a1:2"]
    result, error = await run_activity(_request(slow, "not a number"))
    assert result is None
    assert isinstance(error, TypeError)


GATES: dict[str, asyncio.Event] = {}


@activity
async def gated(name: str) -> str:
    await GATES[name].wait()
    return f"{name} released"


async def test_the_executor_runs_at_most_its_concurrency_and_dedupes_a_running_attempt() -> None:
    GATES.clear()
    GATES.update(first=asyncio.Event(), second=asyncio.Event())
    executor = ActivityExecutor(1)
    first_request = _request(gated, "first", activity_id="a1")
    first = executor.start(_info(first_request), first_request)
    second_request = _request(gated, "second", activity_id="a2")
    second = executor.start(_info(second_request), second_request)
    await asyncio.sleep(0.05)
    assert first.started_at is not None and second.started_at is None  # no slot yet
    assert executor.start(_info(first_request), first_request) is first  # the same attempt
    GATES["second"].set()
    GATES["first"].set()
    assert await first.task == ("first released", None)
    assert await second.task == ("second released", None)
    assert executor.running == 0


async def test_a_detached_attempt_reports_its_outcome_once_and_a_cancelled_one_never() -> None:
    GATES.clear()
    GATES.update(kept=asyncio.Event(), dropped=asyncio.Event())
    reports: list[tuple[str, Outcome]] = []

    async def report(attempt: Attempt, outcome: Outcome) -> None:
        reports.append((attempt.info.activity_id, outcome))

    executor = ActivityExecutor(4, report)
    kept_request = _request(gated, "kept", activity_id="a1")
    kept = executor.start(_info(kept_request), kept_request)
    dropped_request = _request(gated, "dropped", activity_id="a2")
    dropped = executor.start(_info(dropped_request), dropped_request)
    executor.detach(kept)
    executor.detach(dropped)
    assert reports == []  # both still held
    executor.cancel(dropped)
    GATES["kept"].set()
    await kept.task
    await executor.close()
    assert reports == [("a1", ("kept released", None))]
    assert dropped.task.cancelled()


async def test_a_stopping_worker_gives_detached_attempts_a_grace_then_reports_them() -> None:
    GATES.clear()
    GATES.update(quick=asyncio.Event(), stuck=asyncio.Event())
    reports: dict[str, Outcome] = {}

    async def report(attempt: Attempt, outcome: Outcome) -> None:
        reports[attempt.info.activity_id] = outcome

    executor = ActivityExecutor(4, report)
    attempts = {}
    for activity_id, gate in (("a1", "quick"), ("a2", "stuck")):
        request = _request(gated, gate, activity_id=activity_id)
        attempts[activity_id] = executor.start(_info(request), request)
        executor.detach(attempts[activity_id])
    asyncio.get_running_loop().call_later(0.05, GATES["quick"].set)  # ends within the grace
    await executor.close(grace_seconds=1.0)
    assert reports["a1"] == ("quick released", None)
    result, error = reports["a2"]
    assert result is None and isinstance(error, WorkerStoppedError)
