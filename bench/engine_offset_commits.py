"""What one offset commit costs: the client's CPU and the Kafka broker's, per commit.

    .venv/bin/python bench/engine_offset_commits.py [--commits 2000]

Starts Kafka (bench/servers.py), joins a consumer group on a 12-partition topic and
commits offsets of every partition N times in a loop, as the engine did after every batch
before `RUNSTORE_ENGINE_COMMIT_EVERY_MS`. Prints µs of CPU per commit for this process
and for the broker, and the elapsed time: what each commit saved by coalescing is worth.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cpu_meter import cpu_seconds  # noqa: E402
from servers import bench_servers  # noqa: E402

from services.common.kafka_topics import ensure_topics  # noqa: E402
from services.common.settings import RunstoreSettings  # noqa: E402


async def run(bootstrap: str, kafka_pid: int, n: int) -> None:
    settings = RunstoreSettings(kafka_bootstrap=bootstrap, topic_prefix=f"c{uuid.uuid4().hex[:6]}.")
    await ensure_topics(settings)
    topic = settings.topics.commands
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id="commits", enable_auto_commit=False
    )
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        partitions = sorted(consumer.assignment())
        for i in range(200):  # warm-up
            await consumer.commit({tp: i for tp in partitions})
        me, broker = time.process_time(), cpu_seconds(kafka_pid)
        started = time.perf_counter()
        for i in range(n):
            await consumer.commit(
                {TopicPartition(tp.topic, tp.partition): 200 + i for tp in partitions}
            )
        elapsed = time.perf_counter() - started
        me, broker = time.process_time() - me, cpu_seconds(kafka_pid) - broker
    finally:
        await consumer.stop()
    print(
        f"offset commits of {len(partitions)} partitions, {n} in a row"
        f" (load average {os.getloadavg()[0]:.1f})"
    )
    print(f"  client CPU per commit   {me / n * 1e6:8.0f} µs")
    print(f"  broker CPU per commit   {broker / n * 1e6:8.0f} µs")
    print(f"  elapsed per commit      {elapsed / n * 1e6:8.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--commits", type=int, default=2000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="runstore-bench-") as tmp,
        bench_servers(Path(tmp)) as (
            bootstrap,
            _mongo,
            pids,
        ),
    ):
        asyncio.run(run(bootstrap, pids["kafka"], args.commits))


if __name__ == "__main__":
    main()
