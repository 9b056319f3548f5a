"""Direct replies under SIGKILL: the engine answers a start straight to the API once its
commit is stored (docs/api-gateway.md, "The direct reply channel"), before the batch is
published and its offsets committed. Killing the engine at random moments while clients
start executions through the API must leave every execution the API answered 200 stored,
once, with the run id of the answer; and the answers of the restarted engines must have
come by the direct channel as well (the API's metric)."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import httpx
import pytest

from services.common.commit_log import commit_from_doc
from tests.support.exactly_once import create_topics
from tests.support.kafka import commits_of
from tests.support.stack import Stack

AUTH = {"Authorization": "Bearer test-key"}
KILLS = 5
CLIENTS = 4


def _resolved_directly(api_probe: str) -> float:
    text = httpx.get(f"{api_probe}/metrics", timeout=5).text
    found = re.search(r'^runstore_api_outcomes_resolved_total\{path="direct"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
async def test_every_start_answered_while_the_engine_is_killed_is_stored_once(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(20261206)
    env = {
        **isolated,
        "RUNSTORE_ENGINE_INSTANCE_ID": "engine-0",
        "RUNSTORE_ENGINE_SESSION_TIMEOUT_MS": "6000",
        "RUNSTORE_API_COMMAND_TIMEOUT_SECONDS": "20",
    }
    await create_topics(env)
    stack = Stack(env=env, log_dir=tmp_path)
    stack.start("engine")
    stack.start("api")
    answered: dict[str, str] = {}  # execution id -> the run id the API answered
    killing = True

    async def client(n: int) -> None:
        async with httpx.AsyncClient(base_url=stack.api_url, headers=AUTH, timeout=30) as http:
            i = 0
            while killing:
                execution_id = f"k{n}-{i}"
                i += 1
                try:
                    reply = await http.post(
                        "/v1/workflows/wf/execute", json={"execution_id": execution_id}
                    )
                except httpx.HTTPError:
                    continue  # not answered: it may or may not be applied
                if reply.status_code == 200:
                    answered[execution_id] = reply.json()["run_id"]

    try:
        clients = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
        kills = await stack.kill_repeatedly("engine", KILLS, (1.0, 3.0), rng)
        await asyncio.sleep(2.0)  # the last engine answers for a while too
        killing = False
        await asyncio.gather(*clients)
        direct = _resolved_directly(stack.probe_url("api"))
    finally:
        stack.stop_all()
    assert kills == KILLS
    assert len(answered) > 0
    assert direct > 0
    for execution_id, run_id in answered.items():
        commits = [commit_from_doc(d) for d in await commits_of(env, execution_id)]
        starts = [c for c in commits if c.command_type == "StartWorkflow"]
        assert len(starts) == 1, (execution_id, commits)
        assert {e.run_id for e in starts[0].events} == {run_id}, (execution_id, starts)
    print(f"\n{len(answered)} starts answered 200 across {kills} SIGKILLs, {direct:.0f} directly")
