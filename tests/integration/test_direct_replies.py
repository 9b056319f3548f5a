"""The direct reply channel end to end (docs/api-gateway.md, "The direct reply channel"):
executes through the official SDK are answered by the engine's frames when it can reach the
API, and by the outcome topic when it cannot or when the API asks for no frames. The path
is read from the services' metrics, not from timing."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from mistralai.client import Mistral

from services.common.reply_frames import REPLY_HEADER
from tests.support.eventually import wait_until
from tests.support.kafka import commits_of, read_topic, start, topic
from tests.support.stack import Stack, StackWith


def metric(url: str, name: str, label: str) -> float:
    pattern = re.compile(rf"^{name}\{{{label}\}} (\S+)$" if label else rf"^{name} (\S+)$")
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if found := pattern.match(line):
            return float(found.group(1))
    return 0.0


def execute(stack: Stack, n: int) -> None:
    client = Mistral(api_key="test-key", server_url=stack.api_url)
    for _ in range(n):
        got = client.workflows.execute_workflow(workflow_identifier="wf")
        assert got.status == "RUNNING"


def resolved(stack: Stack, path: str) -> float:
    return metric(stack.probe_url("api"), "runstore_api_outcomes_resolved_total", f'path="{path}"')


def replies(stack: Stack, result: str) -> float:
    return metric(stack.probe_url("engine"), "runstore_engine_replies_total", f'result="{result}"')


def test_executes_are_answered_through_the_direct_channel(stack_with: StackWith) -> None:
    with stack_with() as stack:
        execute(stack, 5)
        assert resolved(stack, "direct") >= 1
        assert resolved(stack, "direct") + resolved(stack, "topic") == 5
        assert replies(stack, "sent") >= 5


def point_reads(stack: Stack, path: str) -> float:
    return metric(stack.probe_url("api"), "runstore_api_point_reads_total", f'path="{path}"')


def test_a_read_right_after_a_directly_answered_start_finds_the_run_in_the_index(
    stack_with: StackWith,
) -> None:
    # No wait for the index (RUNSTORE_API_INDEX_WAIT_MS=0): a read it cannot answer at
    # once goes the store's way. With the STARTED event sent along with the answer, the
    # index holds every run a direct reply answered before the answer is given.
    with stack_with(RUNSTORE_API_INDEX_WAIT_MS="0", RUNSTORE_API_LIST_INDEX="memory") as stack:

        def index_ready() -> None:
            assert metric(stack.probe_url("api"), "runstore_api_list_index_runs", "") >= 0

        wait_until(index_ready, 60)
        client = Mistral(api_key="test-key", server_url=stack.api_url)
        answered_directly = 0
        for _ in range(8):
            direct, from_index = resolved(stack, "direct"), point_reads(stack, "index")
            got = client.workflows.execute_workflow(workflow_identifier="wf")
            seen = client.workflows.executions.get_workflow_execution(execution_id=got.execution_id)
            assert (seen.run_id, seen.status) == (got.run_id, "RUNNING")
            if resolved(stack, "direct") > direct:
                answered_directly += 1
                assert point_reads(stack, "index") == from_index + 1
        assert answered_directly >= 1
        assert replies(stack, "sent") >= answered_directly


@pytest.mark.parametrize(
    ("env", "engine_counts"),
    [
        # The API names an address nothing listens on (it listens on 127.0.0.1 only).
        ({"RUNSTORE_API_REPLY_ADVERTISE": "127.0.0.2"}, "dropped"),
        # The engine may not connect to the API's (loopback) address.
        ({"RUNSTORE_ENGINE_REPLY_NETWORKS": '["10.0.0.0/8"]'}, "refused"),
        # The API asks for no frames.
        ({"RUNSTORE_API_DIRECT_REPLIES": "false"}, None),
    ],
    ids=["address-unreachable", "address-not-allowed", "switched-off"],
)
def test_without_the_direct_channel_the_topic_answers(
    stack_with: StackWith, env: dict[str, str], engine_counts: str | None
) -> None:
    with stack_with(**env) as stack:
        execute(stack, 3)
        assert resolved(stack, "topic") == 3
        assert resolved(stack, "direct") == 0
        assert replies(stack, "sent") == 0
        for result in ("dropped", "refused"):
            if result == engine_counts:
                assert replies(stack, result) >= 1
            else:
                assert replies(stack, result) == 0


async def test_a_null_reply_header_costs_no_command_of_its_batch(stack_with: StackWith) -> None:
    # Kafka allows a null header value: the engine must apply every command fetched with
    # such a record (before the fix the whole batch was lost without a trace).
    with stack_with(services=("engine",), RUNSTORE_PARTITIONS="1") as stack:
        env = stack.env
        bootstrap = env["RUNSTORE_KAFKA_BOOTSTRAP"]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
        await producer.start()
        try:
            sent = [
                await producer.send(
                    topic(env, "commands"),
                    json.dumps(start(execution_id, command_id)).encode(),
                    key=execution_id.encode(),
                    headers=headers,
                )
                for execution_id, command_id, headers in (
                    ("plain", "plain-1", []),
                    ("nulled", "nulled-1", [(REPLY_HEADER, None)]),
                )
            ]
            await asyncio.gather(*sent)  # sent together: one batch for the engine
        finally:
            await producer.stop()

        def answered(records: list[Any]) -> set[str]:
            return {json.loads(r.value)["command_id"] for r in records}

        outcomes = await read_topic(
            bootstrap, topic(env, "outcomes"), lambda rs: answered(rs) >= {"plain-1", "nulled-1"}
        )
        assert {"plain-1", "nulled-1"} <= answered(outcomes)
        assert len(await commits_of(env, "plain")) == 1
        assert len(await commits_of(env, "nulled")) == 1
