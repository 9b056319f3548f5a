"""`runstore projections rebuild`: after a random workload through the real stack, the
read models rebuilt from the commits equal the ones the live projector wrote."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from typing import Any

from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from pymongo import AsyncMongoClient

from services.common.readmodels.store import READ_MODELS
from tests.support.eventually import assert_eventually
from tests.support.exactly_once import assert_caught_up, read_models, rebuild
from tests.support.kafka import command, produce
from tests.support.stack import Stack, read_models_name

Doc = dict[str, Any]


def random_command(rnd: random.Random, execution_id: str, run_id: str) -> dict[str, Any]:
    """One command of a random kind; many will be rejected by the domain, which is fine."""
    kind = rnd.choices(
        [
            "signal",
            "activity",
            "custom",
            "complete",
            "fail",
            "cancel",
            "terminate",
            "reset",
            "continue",
            "restart",
        ],
        weights=[6, 4, 2, 2, 2, 1, 1, 1, 1, 1],
    )[0]
    if kind == "signal":
        return command("SignalExecution", execution_id, name="poke", input={"n": rnd.random()})
    if kind == "activity":
        stage = rnd.choice(["started", "completed", "retrying", "failed"])
        failure = {"message": "flaky"} if stage in ("retrying", "failed") else None
        return command(
            "RecordActivityTask",
            execution_id,
            run_id=run_id,
            stage=stage,
            task_id=f"t{rnd.randrange(3)}",
            activity_name="charge",
            input={"x": 1},
            result={"y": 2},
            failure=failure,
        )
    if kind == "custom":
        return command(
            "RecordCustomTask",
            execution_id,
            run_id=run_id,
            stage=rnd.choice(["started", "in_progress", "completed"]),
            custom_task_id="ct",
            custom_task_type="review",
            payload={"p": 1},
        )
    if kind == "complete":
        return command("CompleteExecution", execution_id, run_id=run_id, result=rnd.randrange(9))
    if kind == "fail":
        return command(
            "FailExecution",
            execution_id,
            run_id=run_id,
            failure={"message": "boom"},
            retryable=rnd.random() < 0.5,
        )
    if kind == "cancel":
        return command("CancelExecution", execution_id, reason="enough")
    if kind == "terminate":
        return command("TerminateExecution", execution_id)
    if kind == "reset":
        return command("ResetExecution", execution_id, event_id=1, reason="redo")
    if kind == "continue":
        return command("ContinueAsNew", execution_id, run_id=run_id, input={"next": True})
    return command("StartWorkflow", execution_id, workflow_name="again", input=None)


async def test_rebuilt_read_models_equal_the_live_ones(stack: Stack) -> None:
    env = stack.env
    rnd = random.Random(int(os.environ.get("RUNSTORE_TEST_SEED", "5")))
    client = Mistral(api_key="test-key", server_url=stack.api_url)
    tag = uuid.uuid4().hex[:6]
    executions = [f"rb-{tag}-{i:02d}" for i in range(24)]
    topic = f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.commands"
    for i, execution_id in enumerate(executions):
        if i % 2:
            await asyncio.to_thread(
                client.workflows.execute_workflow,
                workflow_identifier=f"wf{i % 3}",
                execution_id=execution_id,
                input={"i": i},
            )
        else:
            start = command(
                "StartWorkflow",
                execution_id,
                workflow_name=f"wf{i % 3}",
                display_name=f"Run {i}",
                internal=i % 4 == 0,
                retry_policy={"max_attempts": 3, "initial_interval_seconds": 60},
            )
            await produce(env["RUNSTORE_KAFKA_BOOTSTRAP"], topic, [(execution_id, start)])
    for _ in range(6):  # waves: each reads the current run ids, then sends commands
        records: list[tuple[str | None, bytes | dict[str, Any]]] = []
        for execution_id in executions:
            got = await asyncio.to_thread(_current_run, client, execution_id)
            if got is None:
                continue
            for _ in range(rnd.randrange(1, 4)):
                records.append((execution_id, random_command(rnd, execution_id, got)))
        await produce(env["RUNSTORE_KAFKA_BOOTSTRAP"], topic, records)

    mongo: AsyncMongoClient[Doc] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"], tz_aware=True)
    db, models = mongo[env["RUNSTORE_MONGO_DATABASE"]], mongo[read_models_name(env)]
    try:
        await asyncio.sleep(1.0)  # let the engine drain the last wave
        await assert_eventually(lambda: assert_caught_up(db, models), timeout=60)
        stack.stop("projector")
        live = await read_models(models)
        assert len(live["runs"]) >= len(executions)
        statuses = {r["status"] for r in live["runs"].values()}
        assert len(statuses) >= 4, statuses

        result = await rebuild(env)
        # The progress bar (commits done and the rate), then the summary.
        assert "commits" in result.stderr and "/s" in result.stderr
        assert "rebuilt from" in result.stderr
        rebuilt = await read_models(models)
        for name in READ_MODELS:
            assert rebuilt[name] == live[name], f"{name} differs after the rebuild"

        # The projector resumes and re-reads nothing new: the models stay equal.
        stack.start("projector")
        await asyncio.sleep(3.0)
        assert await read_models(models) == live
    finally:
        await mongo.close()


def _current_run(client: Mistral, execution_id: str) -> str | None:
    try:
        got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    except SDKError:
        return None  # not started yet
    return got.run_id
