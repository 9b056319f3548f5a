"""What an empty Kafka fetch costs the broker and the consumer, by how it ends: answered at
once (`fetch_max_wait_ms` 0) or held by the broker until its wait expires (a gathering
fetch, e.g. an engine's set to 64 KiB or 5 ms), by the number of partitions it names.

    .venv/bin/python bench/fetch_wait_cost.py [--seconds 10] [--rounds 2]

Starts its own broker (deploy/local/infra.py) unless RUNSTORE_KAFKA_BOOTSTRAP is set (then
the broker's CPU is read only if its process is local). One aiokafka consumer, assigned
every partition of a topic with nothing new to read, fetches for `--seconds`; prints the
fetch requests it sent and the CPU per request of the broker (its whole process: the idle
share is included, and printed apart) and of this process. Runs alternate per round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_meter import cpu_seconds, kafka_pid
from servers import infra  # deploy/local/infra.py (servers puts it on the path)


async def _fetch_for(
    bootstrap: str,
    broker_pid: int | None,
    topic: str,
    partitions: int,
    wait_ms: int,
    seconds: float,
) -> tuple[int, float | None, float]:
    """(fetch requests sent, broker CPU seconds, this process's CPU seconds) over `seconds`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=wait_ms,
        fetch_min_bytes=65536,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        await consumer.getmany(timeout_ms=200)
        client: Any = consumer._client  # type: ignore[attr-defined]
        send = client.send
        fetches = 0

        async def counted(node_id: int, request: Any, **options: Any) -> Any:
            nonlocal fetches
            if type(request).__name__.startswith("FetchRequest"):
                fetches += 1
            return await send(node_id, request, **options)

        client.send = counted
        broker0 = cpu_seconds(broker_pid) if broker_pid else None
        own0, t0 = time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            await consumer.getmany(timeout_ms=1000)
        broker1 = cpu_seconds(broker_pid) if broker_pid else None
        own = time.process_time() - own0
        broker = broker1 - broker0 if broker0 is not None and broker1 is not None else None
        return fetches, broker, own
    finally:
        await consumer.stop()


async def _idle_broker_cpu(broker_pid: int | None, seconds: float) -> float | None:
    if not broker_pid:
        return None
    before = cpu_seconds(broker_pid)
    await asyncio.sleep(seconds)
    return (cpu_seconds(broker_pid) - before) / seconds


async def _main(bootstrap: str, broker_pid: int | None, seconds: float, rounds: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic("fetch-cost-1", 1, 1), NewTopic("fetch-cost-24", 24, 1)]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:  # one record per partition, so each has a log to read
        for topic, partitions in (("fetch-cost-1", 1), ("fetch-cost-24", 24)):
            for p in range(partitions):
                await producer.send_and_wait(topic, b"x" * 600, partition=p)
    finally:
        await producer.stop()
    await _fetch_for(bootstrap, broker_pid, "fetch-cost-24", 24, 5, min(seconds, 5))  # warm-up
    idle = await _idle_broker_cpu(broker_pid, min(seconds, 5))
    if idle is not None:
        print(f"broker idle: {idle * 1e3:.0f} ms of CPU per second (included below)")
    print(
        f"{'partitions':>10} {'wait':>6} {'fetches/s':>10} {'broker us/fetch':>16} "
        f"{'consumer us/fetch':>18}  load"
    )
    order = [(1, 0), (1, 5), (24, 0), (24, 5)]
    for r in range(rounds):
        for partitions, wait in order if r % 2 == 0 else order[::-1]:
            topic = f"fetch-cost-{partitions}"
            n, broker, own = await _fetch_for(
                bootstrap, broker_pid, topic, partitions, wait, seconds
            )
            n = max(n, 1)
            b = f"{broker / n * 1e6:16.0f}" if broker is not None else f"{'-':>16}"
            print(
                f"{partitions:>10} {wait:>4}ms {n / seconds:>10.0f} {b} "
                f"{own / n * 1e6:>18.0f}  {os.getloadavg()[0]:.1f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if bootstrap := os.environ.get("RUNSTORE_KAFKA_BOOTSTRAP"):
        asyncio.run(_main(bootstrap, kafka_pid(bootstrap), args.seconds, args.rounds))
        return
    with tempfile.TemporaryDirectory(prefix="fetch-cost-") as tmp:
        handle = infra.start_kafka(infra.free_port(), infra.free_port(), Path(tmp) / "kafka")
        try:
            asyncio.run(_main(handle.address, handle.pid, args.seconds, args.rounds))
        finally:
            handle.stop()


if __name__ == "__main__":
    main()
