"""The publishing client's CPU per engine batch: `RecordPublisher.publish_batches` against
the way it sent before 2026-12-06 (a task per partition), interleaved in one process.

    .venv/bin/python bench/publish_cpu.py [--workflows 4] [--batches 1500] [--rounds 4]

A batch is what the engine publishes for `--workflows` one-activity workflows of the
workers bench (each: a start's event, task and outcome; a workflow task's 4 events and
outcome), keyed by execution, on a Kafka started on free ports (or the one
RUNSTORE_KAFKA_BOOTSTRAP names). Prints the CPU time of this process (both the
publisher's call and aiokafka's sender, which runs on the same loop) per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "deploy" / "local"))

import infra  # noqa: E402

from services.common.kafka_io import (  # noqa: E402
    Outgoing,
    RecordPublisher,
    _raise_first,
    append_record,
)
from services.common.kafka_topics import ensure_topics  # noqa: E402
from services.common.settings import RunstoreSettings  # noqa: E402


async def publish_with_a_task_per_partition(
    publisher: RecordPublisher, records: Iterable[Outgoing]
) -> None:
    """`publish_batches` as it was before: every partition's chain in a task of its own."""
    producer = publisher._started()
    cluster = producer.client.cluster
    counts: dict[str, int] = {}
    chains: dict[tuple[str, int], list[object]] = {}
    for r in records:
        count = counts.get(r.topic)
        if count is None:
            await producer.partitions_for(r.topic)
            count = counts[r.topic] = len(cluster.partitions_for_topic(r.topic) or ())
        partition = publisher._hashes.of(r.key.encode()) % count
        append_record(producer, chains.setdefault((r.topic, partition), []), r)  # type: ignore[arg-type]

    async def send_chain(topic: str, partition: int, chain: list[object]) -> None:
        acks = []
        try:
            for builder in chain:
                builder.close()  # type: ignore[attr-defined]
                acks.append(await producer.send_batch(builder, topic, partition=partition))
        finally:
            _raise_first(await asyncio.gather(*acks, return_exceptions=True))

    _raise_first(
        await asyncio.gather(
            *(send_chain(t, p, c) for (t, p), c in chains.items()), return_exceptions=True
        )
    )


def engine_batch(settings: RunstoreSettings, workflows: int, run: str, n: int) -> list[Outgoing]:
    topics = settings.topics
    value = b"x" * 420
    out: list[Outgoing] = []
    for w in range(workflows):
        started = f"w-{run}-{n}-{w}"
        completing = f"w-{run}-{n - 1}-{w}"
        out.append(Outgoing(topics.events, started, value, {"event-type": "STARTED", "seq": "1"}))
        out.extend(
            Outgoing(topics.events, completing, value, {"event-type": "X", "seq": "2"})
            for _ in range(4)
        )
    for w in range(workflows):
        out.append(Outgoing(topics.tasks, f"w-{run}-{n}-{w}", value))
    for w in range(workflows):
        out.append(Outgoing(topics.outcomes, f"w-{run}-{n}-{w}", value[:300]))
        out.append(Outgoing(topics.outcomes, f"w-{run}-{n - 1}-{w}", value[:300]))
    return out


async def measure(bootstrap: str, args: argparse.Namespace) -> None:
    settings = RunstoreSettings(
        kafka_bootstrap=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}."
    )
    await ensure_topics(settings)
    publisher = RecordPublisher(settings, client_id="bench-publish")
    await publisher.start()
    run = uuid.uuid4().hex[:6]
    variants = {
        "one pass (now)": publisher.publish_batches,
        "a task per partition (before)": lambda rs: publish_with_a_task_per_partition(
            publisher, rs
        ),
    }
    totals: dict[str, list[float]] = {name: [] for name in variants}
    n = 0
    try:
        for _ in range(args.rounds):
            for name, publish in variants.items():
                batches = [
                    engine_batch(settings, args.workflows, run, n + i) for i in range(args.batches)
                ]
                n += args.batches
                started = time.process_time()
                for records in batches:
                    await publish(records)
                totals[name].append((time.process_time() - started) / args.batches)
    finally:
        await publisher.stop()
    records = len(engine_batch(settings, args.workflows, run, 0))
    print(
        f"CPU of the publishing process per batch of {records} records "
        f"({args.workflows} workflows):"
    )
    for name, per in totals.items():
        print(f"  {name:32} " + ", ".join(f"{s * 1e6:6.0f}" for s in per) + " µs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workflows", type=int, default=4)
    parser.add_argument("--batches", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if bootstrap := os.environ.get("RUNSTORE_KAFKA_BOOTSTRAP"):
        asyncio.run(measure(bootstrap, args))
        return 0
    with tempfile.TemporaryDirectory(prefix="runstore-publish-cpu-") as tmp:
        handle = infra.start_kafka(infra.free_port(), infra.free_port(), Path(tmp) / "kafka")
        try:
            asyncio.run(measure(handle.address, args))
        finally:
            handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
