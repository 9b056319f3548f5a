"""Records no consumer can take, against the engine as a real process on real Kafka and
the MongoDB-protocol server: the partition always moves on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from services.engine.dead_letters import DEAD_LETTERS, PREVIEW_BYTES
from tests.support.kafka import command, produce, read_topic, start, topic
from tests.support.stack import Stack, StackWith


@pytest.fixture
def engine(stack_with: StackWith) -> Iterator[Stack]:
    """The engine alone, on one partition."""
    with stack_with(services=("engine",), RUNSTORE_PARTITIONS="1") as stack:
        yield stack


async def test_a_dead_letter_too_large_for_the_topic_is_stored_whole_and_the_partition_moves_on(
    engine: Stack,
) -> None:
    env = engine.env
    bootstrap = env["RUNSTORE_KAFKA_BOOTSTRAP"]
    # As large as the broker takes (1 MiB + 12 B per batch by default): its dead-letter copy,
    # with the x-dlq-* headers, is not.
    value = b"x" * 1_048_400
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topic(env, "commands"), value, key=b"big")
    finally:
        await producer.stop()
    await produce(bootstrap, topic(env, "commands"), [("after", start("after", "after-1"))])

    outcomes = await read_topic(bootstrap, topic(env, "outcomes"), lambda rs: len(rs) >= 1)
    assert [json.loads(r.value)["command_id"] for r in outcomes] == ["after-1"]
    (pointer,) = await read_topic(bootstrap, topic(env, "commands.dlq"), lambda rs: len(rs) >= 1)
    headers = {k: v.decode() for k, v in pointer.headers}
    assert headers["x-dlq-reason"] == "too_large"
    assert headers["x-dlq-stored-in"] == DEAD_LETTERS
    assert headers["x-dlq-value-bytes"] == str(len(value))
    assert pointer.key == b"big" and pointer.value == value[:PREVIEW_BYTES]

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"])
    try:
        stored = await client[env["RUNSTORE_MONGO_DATABASE"]][DEAD_LETTERS].find_one(
            {"_id": headers["x-dlq-stored-id"]}
        )
    finally:
        await client.close()
    assert stored is not None
    assert bytes(stored["value"]) == value and bytes(stored["key"]) == b"big"
    assert stored["reason"] == "too_large" and stored["source_offset"] == 0


async def test_a_payload_a_store_refuses_is_dead_lettered_with_its_reason(engine: Stack) -> None:
    env = engine.env
    bootstrap = env["RUNSTORE_KAFKA_BOOTSTRAP"]
    bad = command("StartWorkflow", "nul", "nul-1", workflow_name="wf", input={"a\x00b": 1})
    await produce(
        bootstrap, topic(env, "commands"), [("nul", bad), ("after", start("after", "after-1"))]
    )
    (dead,) = await read_topic(bootstrap, topic(env, "commands.dlq"), lambda rs: len(rs) >= 1)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["x-dlq-reason"] == "payload_refused"
    assert "NUL" in headers["x-dlq-error"] and "payload.input" in headers["x-dlq-error"]
    outcomes = await read_topic(bootstrap, topic(env, "outcomes"), lambda rs: len(rs) >= 1)
    assert [json.loads(r.value)["command_id"] for r in outcomes] == ["after-1"]
