"""Scale-out: 3 engines, 2 projectors and 2 APIs on 12 partitions, one Kafka, one store.

Under a mixed load (commands on Kafka, executions started over both APIs), an engine and
a projector are SIGKILLed and a fourth engine joins. Afterwards the same checks as the
single-engine kill test hold (tests/support/exactly_once.py): one commit per accepted
command, contiguous seqs, the reference's outcomes, every event published, nothing
dead-lettered; the read models equal a rebuild, and each API reads what the other wrote.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from tests.support.eventually import assert_eventually
from tests.support.exactly_once import (
    assert_caught_up,
    assert_exactly_once,
    assert_rebuild_equals,
    await_outcomes,
    produce_paced,
    read_models,
    stored_commits,
    workload,
)
from tests.support.servers import free_port
from tests.support.stack import Stack, read_models_name

EXECUTIONS = 100
HTTP_STARTS = 40
HEADERS = {"Authorization": "Bearer test-key"}


@pytest.mark.slow
async def test_three_engines_two_projectors_two_apis_survive_kills_and_a_join(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(20261205)
    commands = workload(rng, EXECUTIONS, prefix="scale")
    env = {
        **isolated,
        "RUNSTORE_PARTITIONS": "12",
        "RUNSTORE_ENGINE_SESSION_TIMEOUT_MS": "6000",
        "RUNSTORE_ENGINE_MAX_BATCH": "100",
        # A command whose partition sits with the killed engine waits for the session
        # timeout and the new owner: longer than the default 10 s wait may be needed.
        "RUNSTORE_API_COMMAND_TIMEOUT_SECONDS": "60",
        "RUNSTORE_LOG_LEVEL": "WARNING",
    }
    stack = Stack(env=env, log_dir=tmp_path)

    def engine(n: int) -> None:
        stack.start("engine", f"engine-{n}", {"RUNSTORE_ENGINE_INSTANCE_ID": f"engine-{n}"})

    for n in range(3):
        engine(n)
    stack.start("projector", "projector-0")
    stack.start("projector", "projector-1")
    stack.start("api", "api-0", api_port=free_port())
    stack.start("api", "api-1", api_port=free_port())
    apis = [stack.url_of("api-0"), stack.url_of("api-1")]
    http_started: dict[str, str] = {}  # execution id -> run id

    async def http_starts() -> None:
        async with httpx.AsyncClient(headers=HEADERS, timeout=90) as client:
            for n in range(HTTP_STARTS):
                eid = f"scale-http-{n}"
                reply = await client.post(
                    f"{apis[n % 2]}/v1/workflows/wf-http/execute",
                    json={"execution_id": eid, "input": {"n": n}},
                )
                assert reply.status_code == 200, reply.text
                http_started[eid] = reply.json()["run_id"]
                await asyncio.sleep(0.2)

    async def chaos() -> None:
        await asyncio.sleep(3)
        stack.kill("engine-1")
        await asyncio.sleep(3)
        stack.kill("projector-1")
        await asyncio.sleep(3)
        await asyncio.to_thread(engine, 3)

    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"])
    db, models = mongo[env["RUNSTORE_MONGO_DATABASE"]], mongo[read_models_name(env)]
    try:
        started = time.monotonic()
        await asyncio.gather(
            produce_paced(env, commands, rng, 30, (0.2, 0.4)), http_starts(), chaos()
        )
        outcome_records = await await_outcomes(env, {c["command_id"] for c in commands})
        elapsed = time.monotonic() - started

        checked = await assert_exactly_once(
            env, commands, outcome_records, other_executions=frozenset(http_started)
        )
        stored = await stored_commits(env)
        for eid, run_id in http_started.items():
            assert [(d["seq"], d["run_id"]) for d in stored[eid]] == [(1, run_id)], eid

        # Each API reads what the other one started.
        async with httpx.AsyncClient(headers=HEADERS, timeout=30) as client:
            for n, (eid, run_id) in enumerate(http_started.items()):
                reply = await client.get(f"{apis[(n + 1) % 2]}/v1/workflows/executions/{eid}")
                assert reply.status_code == 200, reply.text
                assert reply.json()["run_id"] == run_id

        # The surviving projector took over the killed one's partitions.
        await assert_eventually(lambda: assert_caught_up(db, models), timeout=90, interval=0.5)
        stack.stop("projector-0")
        await assert_rebuild_equals(env, models, await read_models(models))
    finally:
        stack.stop_all()
        await mongo.close()
    print(
        f"\n{len(commands)} Kafka commands + {HTTP_STARTS} HTTP starts, {checked.commits} "
        f"commits, {checked.events} events; drained in {elapsed:.1f}s"
    )
