"""The dead-letter topic (`workflows.commands.dlq`): read its records with the reasons
the engine put in their `x-dlq-*` headers, and re-publish chosen ones to the command
topic, each at most once.

"At most once" is kept in MongoDB: before a record is re-published, a document
`{_id: "<dlq topic>:<partition>:<offset>", state: "publishing"}` is inserted (the unique
`_id` makes a second replay of the same record fail there); once the broker has
acknowledged the record (acks=all), the state becomes "published". A replay that died
between the two stays "publishing" and is reported, never repeated by itself: whether
its record reached Kafka is unknown (look for its `x-dlq-replayed-from` header on the
command topic).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo.errors import DuplicateKeyError

from services.common.kafka_topics import partitions_of
from services.common.mongo import mongo_client, mongo_database
from services.common.settings import RunstoreSettings

REPLAYS = "dlq_replays"
READ_TIMEOUT_SECONDS = 60.0
REPLAYED_FROM_HEADER = "x-dlq-replayed-from"


@dataclass(slots=True)
class DeadLetter:
    partition: int
    offset: int
    key: str
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int
    replay: str | None = None
    """None, "publishing" or "published"."""

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return ""

    def as_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "reason": self.header("x-dlq-reason"),
            "error": self.header("x-dlq-error"),
            "source": f"{self.header('x-dlq-source-partition')}:"
            f"{self.header('x-dlq-source-offset')}",
            "dead_lettered_at": datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat(),
            "replay": self.replay,
            "value": self.value.decode("utf-8", "replace"),
        }


@dataclass(slots=True)
class ReplayReport:
    published: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)


async def read_dead_letters(settings: RunstoreSettings) -> list[DeadLetter]:
    """Every record on the DLQ topic from its start to its current end, with its replay
    state."""
    topic = settings.topics.dlq
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    tps = [TopicPartition(topic, p) for p in await partitions_of(settings, topic)]
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        for tp in pending:
            consumer.seek(tp, starts[tp])
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batches.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        break
                    letters.append(
                        DeadLetter(
                            r.partition,
                            r.offset,
                            (r.key or b"").decode("utf-8", "replace"),
                            r.value or b"",
                            list(r.headers or ()),
                            r.timestamp,
                        )
                    )
                if records and records[-1].offset >= ends[tp] - 1:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    client = mongo_client(settings)
    try:
        db = mongo_database(client, settings)
        ids = [f"{topic}:{d.ref}" for d in letters]
        states = {
            doc["_id"]: doc["state"]
            async for doc in db[REPLAYS].find({"_id": {"$in": ids}}, {"state": 1})
        }
    finally:
        await client.close()
    for d in letters:
        d.replay = states.get(f"{topic}:{d.ref}")
    letters.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return letters


async def replay(settings: RunstoreSettings, chosen: list[DeadLetter]) -> ReplayReport:
    """Re-publish `chosen` to the command topic (original key, value and headers but the
    `x-dlq-*` ones, plus `x-dlq-replayed-from`), each at most once ever."""
    topic = settings.topics.dlq
    report = ReplayReport()
    client = mongo_client(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        replays = mongo_database(client, settings)[REPLAYS]
        for d in chosen:
            claim = f"{topic}:{d.ref}"
            try:
                await replays.insert_one(
                    {"_id": claim, "state": "publishing", "claimed_at": datetime.now(UTC)}
                )
            except DuplicateKeyError:
                found = await replays.find_one({"_id": claim})
                state = found["state"] if found else "published"
                (report.interrupted if state == "publishing" else report.already).append(d.ref)
                continue
            headers = [(k, v) for k, v in d.headers if not k.startswith("x-dlq-")]
            headers.append((REPLAYED_FROM_HEADER, claim.encode()))
            await producer.send_and_wait(
                settings.topics.commands, d.value, key=d.key.encode(), headers=headers
            )
            await replays.update_one(
                {"_id": claim},
                {"$set": {"state": "published", "published_at": datetime.now(UTC)}},
            )
            report.published.append(d.ref)
    finally:
        await producer.stop()
        await client.close()
    return report
