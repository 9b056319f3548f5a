"""Kafka helpers for tests: build and produce command records, read a whole topic back,
and read an execution's stored commits."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pymongo import AsyncMongoClient


def command(
    kind: str, execution_id: str, command_id: str | None = None, **payload: Any
) -> dict[str, Any]:
    return {
        "type": kind,
        "command_id": command_id or str(uuid.uuid4()),
        "execution_id": execution_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "user_id": "tester",
        "payload": payload,
    }


async def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[str | None, bytes | dict[str, Any]]],
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> None:
    """Send (key, value) records in order, each with `headers`; dict values are JSON-encoded."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for key, value in records:
            raw = json.dumps(value).encode() if isinstance(value, dict) else value
            futures.append(
                await producer.send(
                    topic,
                    raw,
                    key=key.encode() if key is not None else None,
                    headers=list(headers) if headers else None,
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[ConsumerRecord[Any, Any]]], bool],
    timeout: float = 30.0,
) -> list[ConsumerRecord[Any, Any]]:
    """Every record of `topic` from the beginning, read until `until(records)` holds."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord[Any, Any]] = []
    try:
        partitions: set[int] = set()
        deadline = time.monotonic() + timeout
        while not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                if time.monotonic() > deadline:
                    raise AssertionError(f"topic {topic} never appeared")
                consumer.subscribe([topic])  # makes the client track its metadata
                await asyncio.sleep(0.2)
                consumer.unsubscribe()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not until(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}: {len(records)} records")
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def read_to_end(
    bootstrap: str, topic: str, partitions: Sequence[int]
) -> list[ConsumerRecord[Any, Any]]:
    """Every record of `topic`'s `partitions` up to their end offsets at the call, partition
    by partition (so only what was acknowledged before the call)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {tp: [] for tp in tps}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                found[tp] += records
        return [record for tp in tps for record in found[tp]]
    finally:
        await consumer.stop()


def topic(env: dict[str, str], name: str) -> str:
    """The full name of topic `name` (e.g. "commands") under the test's topic prefix."""
    return f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.{name}"


def start(execution_id: str, command_id: str | None = None) -> dict[str, Any]:
    """A StartWorkflow command record for workflow `wf`."""
    return command("StartWorkflow", execution_id, command_id, workflow_name="wf", input={"n": 1})


def publish(env: dict[str, str], records: list[tuple[str, dict[str, Any]]]) -> None:
    """Produce (key, command) records to the commands topic, from synchronous tests."""
    asyncio.run(produce(env["RUNSTORE_KAFKA_BOOTSTRAP"], topic(env, "commands"), records))


async def commits_of(env: dict[str, str], execution_id: str) -> list[dict[str, Any]]:
    """The execution's stored commits, in seq order (stops at the first gap)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"])
    try:
        db = client[env["RUNSTORE_MONGO_DATABASE"]]
        found = []
        while doc := await db.commits.find_one({"_id": f"{execution_id}:{len(found) + 1:012d}"}):
            found.append(doc)
        return found
    finally:
        await client.close()
