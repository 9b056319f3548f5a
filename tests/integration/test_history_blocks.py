"""A long history through the real stack: 2,500 events sent as commands while the
projector is SIGKILLed and restarted, then read over HTTP — through sealed blocks, through
chunks only (as histories written before blocks existed), and after a rebuild — always
equal to the events in the event store."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from services.common.commit_log import commit_filter, commit_from_doc
from services.common.readmodels.history_chunks import event_json, history_block_key, is_block
from services.common.readmodels.store import HISTORY
from tests.support.eventually import assert_eventually
from tests.support.exactly_once import (
    assert_caught_up,
    assert_rebuild_equals,
    produce_paced,
    read_models,
)
from tests.support.kafka import command
from tests.support.stack import Stack, read_models_name

Doc = dict[str, Any]
SIGNALS = 2_499
KILLS = 4


async def _history(stack: Stack, execution_id: str, **params: Any) -> Doc:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        res = await http.get(
            f"/v1/workflows/executions/{execution_id}/history",
            params=params,
            headers={"Authorization": "Bearer test-key"},
        )
    assert res.status_code == 200, res.text
    body: Doc = res.json()
    return body


async def _paged(stack: Stack, execution_id: str, size: int) -> list[Doc]:
    events: list[Doc] = []
    params: dict[str, Any] = {"page_size": size}
    while True:
        page = await _history(stack, execution_id, **params)
        events += page["events"]
        if page["next_page_token"] is None:
            return events
        params["next_page_token"] = page["next_page_token"]


@pytest.mark.slow
async def test_a_long_history_survives_projector_kills_and_reads_the_same_every_way(
    stack: Stack,
) -> None:
    env = stack.env
    rng = random.Random(16)
    execution_id = "long-history"
    commands = [command("StartWorkflow", execution_id, workflow_name="long", input=None)]
    commands += [
        command("SignalExecution", execution_id, name="tick", input={"n": n})
        for n in range(SIGNALS)
    ]
    mongo: AsyncMongoClient[Doc] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"], tz_aware=True)
    db, models = mongo[env["RUNSTORE_MONGO_DATABASE"]], mongo[read_models_name(env)]
    try:
        _, kills = await asyncio.gather(
            produce_paced(env, commands, rng, 100, (0.1, 0.3)),
            stack.kill_repeatedly("projector", KILLS, (1.0, 2.5), rng),
        )
        assert kills == KILLS
        await assert_eventually(lambda: assert_caught_up(db, models), timeout=120)
        stored = [
            event_json(e)
            async for c in db.commits.find(commit_filter(execution_id)).sort("_id", 1)
            for e in commit_from_doc(c).events
        ]
        assert len(stored) == SIGNALS + 1
        run_id = stored[0]["run_id"]

        async def read_back() -> None:
            whole = (await _history(stack, execution_id))["events"]
            assert whole == stored
            assert [e["event_number"] for e in whole] == list(range(1, SIGNALS + 2))
            for size in (1000, 100):
                assert await _paged(stack, execution_id, size) == whole, size

        history = await read_models(models)
        blocks = sorted(i for i in history[HISTORY] if is_block(i))
        assert blocks == [history_block_key(run_id, 0), history_block_key(run_id, 1)]
        await read_back()
        # As histories written before blocks existed: chunks only, the same events.
        await models[HISTORY].delete_many({"_id": {"$in": blocks}})
        await read_back()
        # The rebuild seals them again, and equals what the live projector wrote.
        stack.stop("projector")
        await assert_rebuild_equals(env, models, history)
        await read_back()
    finally:
        await mongo.close()
