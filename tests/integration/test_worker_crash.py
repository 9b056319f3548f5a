"""Durable execution, proven by SIGKILL: a workflow of 50 activities runs while its worker
is killed 20 times and restarted. Afterwards every activity's side effect is applied once
per successful attempt (keyed by the attempt's idempotency key, in a real MongoDB), the
result equals an uninterrupted run's, and the history has no gap and no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from schemas.events import Event
from services.common.commit_log import commit_filter, commit_from_doc
from tests.support.eventually import assert_eventually
from tests.support.stack import Stack, StackWith

KILLS = 20
STEPS = 50
AUTH = {"Authorization": "Bearer test-key"}
WORKER_ARGS = ["--module", "tests.support.crash_workflows"]


async def _execute(http: httpx.AsyncClient, execution_id: str) -> None:
    answer = await http.post(
        "/v1/workflows/crash-fifty/execute", json={"input": STEPS, "execution_id": execution_id}
    )
    assert answer.status_code == 200, answer.text


async def _wait_closed(http: httpx.AsyncClient, execution_id: str, timeout: float) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        got = (await http.get(f"/v1/workflows/executions/{execution_id}")).json()
        if got["status"] != "RUNNING":
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"{execution_id} still running after {timeout} s")


@pytest.mark.slow
async def test_worker_killed_twenty_times_applies_each_side_effect_once(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(20261205)
    env = {
        **isolated,
        "RUNSTORE_WORKER_INSTANCE_ID": "worker-0",
        "RUNSTORE_WORKER_SESSION_TIMEOUT_MS": "6000",
        # A task waits 0.3 s for its activities, then they report on their own: kills hit
        # both kinds (an unreported task is redelivered; a detached attempt times out).
        "RUNSTORE_WORKER_ACTIVITY_EAGER_SECONDS": "0.3",
    }
    stack = Stack(env=env, log_dir=tmp_path)
    for service in ("engine", "projector", "timers"):
        stack.start(service)
    stack.start("worker", args=WORKER_ARGS)
    stack.start("api")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"])
    db = mongo[env["RUNSTORE_MONGO_DATABASE"]]
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, headers=AUTH, timeout=30) as http:
            await _execute(http, "calm")
            reference = await _wait_closed(http, "calm", timeout=120)
            assert reference["status"] == "COMPLETED", reference

            await _execute(http, "crashy")
            kills = 0
            while kills < KILLS:
                # A restarted worker takes ~1-2 s to import and rejoin: kill it in its work.
                await asyncio.sleep(rng.uniform(1.0, 2.5))
                stack.kill("worker")
                kills += 1
                stack.start("worker", args=WORKER_ARGS)
            crashed = await _wait_closed(http, "crashy", timeout=180)
        assert crashed["status"] == "COMPLETED", crashed
        assert crashed["result"] == reference["result"]

        commits = [
            commit_from_doc(d)
            async for d in db["commits"].find(commit_filter("crashy")).sort("_id", 1)
        ]
        assert [c.seq for c in commits] == list(range(1, len(commits) + 1))
        events = [e for c in commits for e in c.events]
        assert len({e.event_id for e in events}) == len(events)
        completed = Counter(
            e.attributes.task_id  # type: ignore[union-attr]
            for e in events
            if e.type == "ACTIVITY_TASK_COMPLETED"
        )
        assert len(completed) == STEPS and set(completed.values()) == {1}
        assert len(commits) > 3, "progress was reported along the way, not only at the end"

        effects = [d async for d in db["side_effects"].find({"execution_id": "crashy"})]
        applied_keys = {d["_id"] for d in effects}
        # Each activity completed once in the history, with exactly one applied side effect
        # for the attempt that completed it; an attempt cut off by a kill may have applied
        # its own (its key names that attempt) but never a second one.
        completed_keys = {
            f"crashy:{e.attributes.task_id}:{e.attributes.attempt}"  # type: ignore[union-attr]
            for e in events
            if e.type == "ACTIVITY_TASK_COMPLETED"
        }
        assert completed_keys <= applied_keys
        assert sorted(d["n"] for d in effects if d["_id"] in completed_keys) == list(range(STEPS))
        bodies = await db["activity_bodies"].count_documents({"key": {"$regex": "^crashy:"}})
        detached = sum(
            1
            for e in events
            if e.type == "TIMER_STARTED" and e.attributes.timer_id.startswith("activity:")  # type: ignore[union-attr]
        )
        timed_out = sum(1 for e in events if e.type == "ACTIVITY_TASK_RETRYING")
        print(
            f"\nworker kills: {kills}; commits: {len(commits)}; activity bodies run: {bodies} "
            f"for {STEPS} activities (at-least-once); side effects applied: {len(effects)}; "
            f"attempts detached: {detached}; retried after their deadline: {timed_out}"
        )
    finally:
        await mongo.close()
        stack.stop_all()


async def test_a_reset_replays_the_new_run_without_running_completed_activities_again(
    stack_with: StackWith,
) -> None:
    """Reset to the third completed activity: the worker replays the new run from its
    history (the reset copied the activity events up to that point), so only the activities
    after it run again, and the result equals the first run's."""
    steps, reset_after = 5, 3
    async with (
        _crash_workflows_stack(stack_with) as (stack, db),
        httpx.AsyncClient(base_url=stack.api_url, headers=AUTH, timeout=30) as http,
    ):
        answer = await http.post(
            "/v1/workflows/crash-fifty/execute",
            json={"input": steps, "execution_id": "resettable"},
        )
        assert answer.status_code == 200, answer.text
        first = await _wait_closed(http, "resettable", timeout=120)
        assert first["status"] == "COMPLETED", first
        assert await db["activity_bodies"].count_documents({}) == steps

        events = await _events(db, "resettable")
        first_run = events[0].run_id
        done = [e for e in events if e.type == "ACTIVITY_TASK_COMPLETED"]
        reset_point = done[reset_after - 1].event_number
        answer = await http.post(
            "/v1/workflows/executions/resettable/reset",
            json={
                "event_id": reset_point,
                "reason": "test",
                "exclude_signals": False,
                "exclude_updates": False,
            },
        )
        assert answer.status_code == 204, answer.text

        async def new_run_closed() -> list[Event]:
            events = await _events(db, "resettable")
            closed = [
                e
                for e in events
                if e.run_id != first_run and e.type == "WORKFLOW_EXECUTION_COMPLETED"
            ]
            assert closed, "the new run has not completed yet"
            return events

        events = await assert_eventually(new_run_closed, timeout=120)
        second = (await http.get("/v1/workflows/executions/resettable")).json()
        assert second["status"] == "COMPLETED" and second["result"] == first["result"]
        new_run = [e for e in events if e.run_id != first_run]
        assert new_run[0].type == "WORKFLOW_RUN_RESET"
        # Copied: the activities up to the reset point; run again: only the ones after it.
        completed = [e for e in new_run if e.type == "ACTIVITY_TASK_COMPLETED"]
        assert len(completed) == steps
        bodies = await db["activity_bodies"].count_documents({})
        assert bodies == steps + (steps - reset_after)


async def test_a_held_activity_does_not_stop_other_workflows_on_the_same_worker(
    stack_with: StackWith, tmp_path: Path
) -> None:
    """One worker, one activity held until a file exists: its workflow task ends after the
    eager window (the attempt is detached), so the worker's next tasks (here another
    workflow's, maybe on the same partition) are taken while it is held."""
    gate = tmp_path / "open"
    async with (
        _crash_workflows_stack(stack_with) as (stack, db),
        httpx.AsyncClient(base_url=stack.api_url, headers=AUTH, timeout=30) as http,
    ):
        answer = await http.post(
            "/v1/workflows/held/execute",
            json={"input": str(gate), "execution_id": "long"},
        )
        assert answer.status_code == 200, answer.text

        async def held_started() -> None:
            assert await db["held_started"].count_documents({}) == 1

        await assert_eventually(held_started, timeout=60)
        answer = await http.post(
            "/v1/workflows/crash-fifty/execute",
            json={"input": 3, "execution_id": "short"},
        )
        assert answer.status_code == 200, answer.text
        short = await _wait_closed(http, "short", timeout=60)
        assert short["status"] == "COMPLETED", short
        assert short["result"] == {"sum": 0 + 1 + 4, "squares": [0, 1, 4]}
        # Meanwhile the long one is still held, its attempt detached and watched.
        assert not gate.exists()
        still = (await http.get("/v1/workflows/executions/long")).json()
        assert still["status"] == "RUNNING", still
        timers = [
            e.attributes.timer_id  # type: ignore[union-attr]
            for e in await _events(db, "long")
            if e.type == "TIMER_STARTED"
        ]
        assert timers == ["activity:a1:1:1"]

        gate.touch()
        done = await _wait_closed(http, "long", timeout=60)
        assert done["status"] == "COMPLETED" and done["result"] == "released a1", done
        assert await db["held_started"].count_documents({}) == 1  # one attempt
        types = [e.type for e in await _events(db, "long")]
        assert types.count("ACTIVITY_TASK_COMPLETED") == 1
        assert "TIMER_CANCELED" in types  # its deadline, once the outcome came


async def test_a_stopped_worker_reports_its_detached_attempt_failed_and_it_runs_again(
    stack_with: StackWith, tmp_path: Path
) -> None:
    """SIGTERM while a detached attempt runs: after its grace the worker reports the attempt
    failed (WorkerStoppedError), so the policy retries it on the next worker at once, not
    after the attempt's deadline (over 5 minutes here)."""
    gate = tmp_path / "open"
    async with (
        _crash_workflows_stack(stack_with, RUNSTORE_WORKER_SHUTDOWN_GRACE_SECONDS="0.5") as (
            stack,
            db,
        ),
        httpx.AsyncClient(base_url=stack.api_url, headers=AUTH, timeout=30) as http,
    ):
        answer = await http.post(
            "/v1/workflows/held/execute", json={"input": str(gate), "execution_id": "stopped"}
        )
        assert answer.status_code == 200, answer.text

        async def held_started() -> None:
            assert await db["held_started"].count_documents({}) == 1

        await assert_eventually(held_started, timeout=60)
        stack.stop("worker")

        async def reported_stopped() -> None:
            retrying = [
                e for e in await _events(db, "stopped") if e.type == "ACTIVITY_TASK_RETRYING"
            ]
            assert [e.attributes.failure.type for e in retrying] == ["WorkerStoppedError"]  # type: ignore[union-attr]

        await assert_eventually(reported_stopped, timeout=30)
        stack.start("worker", args=WORKER_ARGS)
        gate.touch()
        done = await _wait_closed(http, "stopped", timeout=60)
        assert done["status"] == "COMPLETED" and done["result"] == "released a1", done
        assert await db["held_started"].count_documents({}) == 2  # attempt 1, attempt 2
        completed = [e for e in await _events(db, "stopped") if e.type == "ACTIVITY_TASK_COMPLETED"]
        assert [e.attributes.attempt for e in completed] == [2]  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def _crash_workflows_stack(
    stack_with: StackWith, **env: str
) -> AsyncIterator[tuple[Stack, Any]]:
    """A stack whose worker serves tests.support.crash_workflows, and its database."""
    services = ("engine", "projector", "timers", "worker", "api")
    with stack_with(
        services=services, worker_module="tests.support.crash_workflows", **env
    ) as stack:
        env = stack.env
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"])
        try:
            yield stack, mongo[env["RUNSTORE_MONGO_DATABASE"]]
        finally:
            await mongo.close()


async def _events(db: Any, execution_id: str) -> list[Event]:
    docs = db["commits"].find(commit_filter(execution_id)).sort("_id", 1)
    return [e async for d in docs for e in commit_from_doc(d).events]
