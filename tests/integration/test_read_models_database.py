"""`RUNSTORE_MONGO_READ_MODELS_DATABASE`: the read models in a database of their own (on
FerretDB a SQLite file of its own, so the projector's writes do not hold the engine's
back; docs/local-store.md, "Thirteenth session"). Through the real stack: the projector
writes run rows, pointers and history there and nothing into the commits' database; the
API answers reads and lists from there, also after a restart (its run list index loads
the rows from there); `runstore projections rebuild` rebuilds them there; a projector
SIGKILLed while it writes there leaves them equal to a rebuild from the commits."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from pymongo import AsyncMongoClient

from schemas.commits import commit_id
from services.common.readmodels.store import EXECUTIONS, READ_MODELS, RUNS
from tests.support.eventually import assert_eventually, wait_until
from tests.support.exactly_once import produce_paced, read_models, rebuild
from tests.support.kafka import command
from tests.support.stack import Stack, StackWith

MODELS = f"rm_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def apart(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(RUNSTORE_MONGO_READ_MODELS_DATABASE=MODELS) as stack:
        yield stack


@pytest.fixture
async def mongo(apart: Stack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(apart.env["RUNSTORE_MONGO_URL"])
    try:
        yield client
    finally:
        await client.close()


def index_ready(url: str) -> None:
    """The API's run list index is loaded (its size metric is -1 until then)."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("runstore_api_list_index_runs "):
            assert float(line.split()[1]) >= 1
            return
    raise AssertionError("no runstore_api_list_index_runs metric")


def listed_canceled(client: Mistral, execution_id: str) -> None:
    page = client.workflows.runs.list_runs(search=execution_id)
    found = {r.status for r in page.result.executions if r.execution_id == execution_id}
    assert found == {"CANCELED"}


async def test_read_models_go_to_their_own_database_and_are_read_from_there(
    apart: Stack, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    main, models = mongo[apart.env["RUNSTORE_MONGO_DATABASE"]], mongo[MODELS]
    client = Mistral(api_key="test-key", server_url=apart.api_url)
    execution_id = f"rm-{uuid.uuid4().hex[:12]}"
    started = client.workflows.execute_workflow(
        workflow_identifier="apart-wf", execution_id=execution_id
    )
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)

    async def projected() -> None:
        pointer = await models[EXECUTIONS].find_one({"_id": execution_id})
        assert pointer is not None and pointer["seq"] == 2
        row = await models[RUNS].find_one({"_id": started.run_id})
        assert row is not None and row["status"] == "CANCELED"

    await assert_eventually(projected, timeout=60)
    # The commits' database holds the commits and none of the read models.
    for seq in (1, 2):
        assert await main.commits.find_one({"_id": commit_id(execution_id, seq)}) is not None
    for name in READ_MODELS:
        assert await main[name].count_documents({}) == 0, name

    run = client.workflows.runs.get_run(run_id=started.run_id or "")
    assert (run.execution_id, run.status) == (execution_id, "CANCELED")
    wait_until(lambda: listed_canceled(client, execution_id), timeout=60)

    # A restarted API builds its run list index from the rows in the read models' database
    # (and then follows the events after the projector's committed offsets, which are past
    # this run's): once the index is ready, lists come from it.
    apart.stop("api")
    apart.start("api")
    client = Mistral(api_key="test-key", server_url=apart.api_url)
    wait_until(lambda: index_ready(apart.api_url), timeout=60)
    wait_until(lambda: listed_canceled(client, execution_id), timeout=30)

    # A rebuild (projector stopped) writes the same documents into the same database.
    apart.stop("projector")
    live = await read_models(models)
    await models[RUNS].delete_many({})
    await models[EXECUTIONS].delete_many({})
    await rebuild(apart.env)
    assert await read_models(models) == live
    for name in READ_MODELS:
        assert await main[name].count_documents({}) == 0, name
    apart.start("projector")


async def test_a_projector_killed_while_writing_apart_leaves_them_equal_to_a_rebuild(
    apart: Stack, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    main, models = mongo[apart.env["RUNSTORE_MONGO_DATABASE"]], mongo[MODELS]
    rng = random.Random(13)
    executions = [f"rk-{uuid.uuid4().hex[:8]}-{n}" for n in range(12)]
    commands = [command("StartWorkflow", e, workflow_name="apart", input=None) for e in executions]
    commands += [
        command("SignalExecution", rng.choice(executions), name="tick", input={"n": n})
        for n in range(600)
    ]
    _, kills = await asyncio.gather(
        produce_paced(apart.env, commands, rng, 40, (0.1, 0.3)),
        apart.kill_repeatedly("projector", 3, (0.5, 1.5), rng),
    )
    assert kills == 3

    async def caught_up() -> None:
        newest: dict[str, int] = {}
        for e in executions:
            seq = 0
            while await main.commits.find_one({"_id": commit_id(e, seq + 1)}, {"_id": 1}):
                seq += 1
            newest[e] = seq
        assert sum(newest.values()) == len(commands)  # every command was applied once
        pointers = {
            d["_id"]: d["seq"] async for d in models[EXECUTIONS].find({"_id": {"$in": executions}})
        }
        assert pointers == newest

    await assert_eventually(caught_up, timeout=120)
    for name in READ_MODELS:
        assert await main[name].count_documents({}) == 0, name
    apart.stop("projector")
    live = await read_models(models)
    await rebuild(apart.env)
    assert await read_models(models) == live
    apart.start("projector")
