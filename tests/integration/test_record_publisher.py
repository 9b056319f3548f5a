"""`RecordPublisher.publish_batches` on a real broker: Kafka's default partitioning, order
per key, headers, and batches that spill over the producer's batch size."""

from __future__ import annotations

import random
from collections import defaultdict

from aiokafka.partitioner import DefaultPartitioner

from services.common.kafka_io import Outgoing, RecordPublisher
from services.common.kafka_topics import ensure_topics, partitions_of
from services.common.settings import RunstoreSettings
from tests.support.kafka import read_to_end


async def read_partitions(
    settings: RunstoreSettings, topic: str
) -> dict[int, list[tuple[bytes, bytes, dict[str, bytes]]]]:
    got: dict[int, list[tuple[bytes, bytes, dict[str, bytes]]]] = defaultdict(list)
    for r in await read_to_end(
        settings.kafka_bootstrap, topic, await partitions_of(settings, topic)
    ):
        got[r.partition].append((r.key, r.value, dict(r.headers)))
    return got


async def test_batches_land_where_the_default_partitioner_puts_them_in_order(
    settings: RunstoreSettings,
) -> None:
    await ensure_topics(settings)
    topic = settings.topics.events
    partitions = await partitions_of(settings, topic)
    rng = random.Random(3)
    keys = [f"exec-{i}" for i in range(40)]
    # Values up to 20 kB: a partition's records exceed the 256 kB batch size, so some
    # partitions need a chain of several batches.
    records = [
        Outgoing(
            topic,
            key,
            f"{key}:{n}:".encode() + b"x" * rng.randrange(0, 20_000),
            {"seq": str(n)} if n % 2 else None,
        )
        for n, key in enumerate(rng.choice(keys) for _ in range(600))
    ]

    publisher = RecordPublisher(settings, client_id="test-record-publisher")
    await publisher.start()
    try:
        await publisher.publish_batches(records)
    finally:
        await publisher.stop()

    got = await read_partitions(settings, topic)
    assert sum(len(v) for v in got.values()) == len(records)  # nothing lost or repeated
    default = DefaultPartitioner()
    expected: dict[int, list[tuple[bytes, bytes, dict[str, bytes]]]] = defaultdict(list)
    for r in records:
        key = r.key.encode()
        partition = default(key, partitions, partitions)
        headers = {k: v.encode() for k, v in (r.headers or {}).items()}
        expected[partition].append((key, r.value, headers))
    # Same partition as the default partitioner, in the order given, headers intact.
    assert dict(got) == dict(expected)
    assert len(got) > 1
    # At least one partition received more than one batch's worth (256 kB).
    assert max(sum(len(v) for _, v, _ in recs) for recs in got.values()) > 256 * 1024
