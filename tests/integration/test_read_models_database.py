"""`RUNSTORE_MONGO_READ_MODELS_DATABASE`: the read models in a database of their own (on
FerretDB a SQLite file of its own, so the projector's writes do not hold the engine's
back; docs/local-store.md). Through the real stack, with the setting named: the projector
writes run rows, pointers and history there and nothing into the commits' database; the
API answers reads and lists from there, also after a restart (its run list index loads
the rows from there); `runstore projections rebuild` rebuilds them there; a projector
SIGKILLed while it writes there leaves them equal to a rebuild from the commits. With
the default (`<database>_readmodels`), a deployment whose read models are still in the
commits' database is refused until rebuilt."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from pymongo import AsyncMongoClient

from schemas.commits import commit_id
from services.common.mongo import mark_rebuild
from services.common.readmodels.store import EXECUTIONS, READ_MODELS, RUNS
from tests.support.eventually import assert_eventually, wait_until
from tests.support.exactly_once import assert_caught_up, produce_paced, read_models, rebuild
from tests.support.kafka import command, commits_of
from tests.support.stack import Stack, StackWith, running

MODELS = f"rm_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def apart(stack_with: StackWith) -> Iterator[Stack]:
    # (The run list index in memory whatever the server: `index_ready` waits for it.)
    with stack_with(
        RUNSTORE_MONGO_READ_MODELS_DATABASE=MODELS, RUNSTORE_API_LIST_INDEX="memory"
    ) as stack:
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


async def _pointer_seqs(models: Any, executions: list[str]) -> int:
    """The sum of the executions' pointer seqs: grows with every projected commit."""
    return sum([d["seq"] async for d in models[EXECUTIONS].find({"_id": {"$in": executions}})])


def _written_since_started(models: Any, executions: list[str]) -> Callable[[], Awaitable[None]]:
    """A `Stack.kill_repeatedly` readiness check, called right after the projector's
    (re)start: returns once it has written something since (its pointers' seqs grew).
    Its timeout fails the test if the projector stops writing."""

    async def ready() -> None:
        before = await _pointer_seqs(models, executions)

        async def wrote() -> None:
            assert await _pointer_seqs(models, executions) > before

        await assert_eventually(wrote, timeout=60, interval=0.05)

    return ready


async def test_a_projector_killed_while_writing_apart_leaves_them_equal_to_a_rebuild(
    apart: Stack, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    main, models = mongo[apart.env["RUNSTORE_MONGO_DATABASE"]], mongo[MODELS]
    rng = random.Random(13)
    executions = [f"rk-{uuid.uuid4().hex[:8]}-{n}" for n in range(12)]
    commands = [command("StartWorkflow", e, workflow_name="apart", input=None) for e in executions]
    await produce_paced(apart.env, commands, rng, len(commands), (0.0, 0.0))
    killed = asyncio.Event()

    async def signals_until_killed() -> None:
        # A steady load (~20 commands every 0-50 ms) that lasts past the last kill, so the
        # projector is writing whenever it is killed and has work after its last restart.
        last = False
        while not last:
            last = killed.is_set()
            chunk = [
                command("SignalExecution", rng.choice(executions), name="tick", input={"n": n})
                for n in range(len(commands), len(commands) + 20)
            ]
            commands.extend(chunk)
            await produce_paced(apart.env, chunk, rng, len(chunk), (0.0, 0.05))

    async def kills() -> None:
        try:
            # Each kill 0-0.3 s after the projector was seen writing since its restart:
            # somewhere in its next batches.
            ready = _written_since_started(models, executions)
            await apart.kill_repeatedly("projector", 3, (0.0, 0.3), rng, ready)
        finally:
            killed.set()

    await asyncio.gather(signals_until_killed(), kills())

    async def caught_up() -> None:
        stored = [await commits_of(apart.env, e) for e in executions]
        assert sum(map(len, stored)) == len(commands)  # every command was applied once
        await assert_caught_up(main, models)

    await assert_eventually(caught_up, timeout=120)
    for name in READ_MODELS:
        assert await main[name].count_documents({}) == 0, name
    apart.stop("projector")
    live = await read_models(models)
    await rebuild(apart.env)
    assert await read_models(models) == live
    apart.start("projector")


async def test_an_upgraded_deployment_refuses_an_empty_read_models_database_until_rebuilt(
    isolated: dict[str, str], tmp_path: Path, mongo_db: Any, models_db: Any
) -> None:
    """A deployment from before the read models moved (one database) upgraded to the
    default (a database of their own): the projector and the API refuse to start, saying
    how to go on, instead of serving empty lists; after `runstore projections rebuild`
    they serve the runs written before."""
    one_database = {
        **isolated,
        "RUNSTORE_MONGO_READ_MODELS_DATABASE": isolated["RUNSTORE_MONGO_DATABASE"],
    }
    execution_id = f"old-{uuid.uuid4().hex[:8]}"
    (tmp_path / "before").mkdir()
    with running(one_database, tmp_path / "before") as before:
        client = Mistral(api_key="test-key", server_url=before.api_url)
        run_id = client.workflows.execute_workflow(
            workflow_identifier="old-wf", execution_id=execution_id
        ).run_id
        assert run_id is not None

        async def projected_there() -> None:
            assert await mongo_db[RUNS].count_documents({}) == 1

        await assert_eventually(projected_there, timeout=60)

    (tmp_path / "after").mkdir()
    after = Stack(env=isolated, log_dir=tmp_path / "after")
    try:
        after.start("projector")
        assert await asyncio.to_thread(after.procs["projector"].wait, 60) != 0
        with pytest.raises(RuntimeError, match="projections rebuild"):
            after.start("api")
        assert "projections rebuild" in after.log_tail("projector", 80)
        assert models_db.name in after.log_tail("projector", 80)
        assert await models_db[RUNS].count_documents({}) == 0
    finally:
        after.stop_all()

    # A rebuild that stopped half-way (its mark left at "running") is refused as well.
    await mark_rebuild(models_db, "running")
    (tmp_path / "half").mkdir()
    half = Stack(env=isolated, log_dir=tmp_path / "half")
    try:
        with pytest.raises(RuntimeError, match="has not finished"):
            half.start("api")
    finally:
        half.stop_all()

    await rebuild(isolated)
    (tmp_path / "rebuilt").mkdir()
    with running(isolated, tmp_path / "rebuilt") as rebuilt:
        client = Mistral(api_key="test-key", server_url=rebuilt.api_url)
        run = client.workflows.runs.get_run(run_id=run_id)
        assert (run.execution_id, run.status) == (execution_id, "RUNNING")
        page = client.workflows.runs.list_runs(search=execution_id)
        assert [r.run_id for r in page.result.executions] == [run_id]
        newer = f"new-{uuid.uuid4().hex[:8]}"
        client.workflows.execute_workflow(workflow_identifier="new-wf", execution_id=newer)

        async def projected() -> None:
            assert await models_db[EXECUTIONS].find_one({"_id": newer}) is not None

        await assert_eventually(projected, timeout=60)
    assert await mongo_db[EXECUTIONS].find_one({"_id": newer}) is None
