"""Timers benchmark: fires per second and firing lateness with 100,000 pending timers.

The timers service's core (services/timers: heap per partition, MongoDB store, Kafka
publisher) runs in this process against real Kafka and the MongoDB-protocol server:
1. 100,000 execution-timeout timers are derived from synthetic STARTED events and stored
   through `TimerService.apply` (as the events consumer does): stored timers/s;
2. the store is read back as a rebalance would (`assign` of every partition): load time;
3. the timers fall due at `--rate` per second and the firing loop sends their
   TimeOutExecution commands to Kafka and deletes them: achieved fires/s, lateness
   p50/p99/max (time the command was acknowledged by Kafka minus its fire time).
Goal (issue #13): p99 lateness <= 1 s at 1,000 fires/s.

    .venv/bin/python bench/timers.py [--timers 100000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import bench_servers

from schemas.common import Payload
from schemas.events import ExecutionStarted, StartedAttributes
from services.common.clock import now_ns
from services.common.kafka_io import RecordPublisher
from services.common.kafka_topics import ensure_topics
from services.common.mongo import mongo_client, mongo_database
from services.common.settings import TimersSettings
from services.timers.firing import TimerService
from services.timers.timer_store import MongoTimerStore

PARTITIONS = 12
BATCH = 1000


def started(n: int, at_ns: int, timeout_s: float) -> ExecutionStarted:
    eid = f"bench-{n}"
    return ExecutionStarted(
        event_id=f"{eid}:1:0",
        execution_id=eid,
        seq=1,
        index=0,
        event_number=1,
        run_id=f"run-{n}",
        workflow_name="wf",
        root_execution_id=eid,
        timestamp_ns=at_ns,
        command_id=f"c-{n}",
        attributes=StartedAttributes(
            task_id="t", workflow_name="wf", input=Payload(), execution_timeout_seconds=timeout_s
        ),
    )


async def run(kafka: str, mongo: str, total: int, rate: float, lead_s: float) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = TimersSettings(
        kafka_bootstrap=kafka,
        mongo_url=mongo,
        mongo_database=f"bench_timers_{tag}",
        topic_prefix=f"bench{tag}.",
        partitions=PARTITIONS,
    )
    await ensure_topics(settings)
    client = mongo_client(settings)
    db = mongo_database(client, settings)
    store = MongoTimerStore(db)
    await store.setup()
    publisher = RecordPublisher(settings, client_id="bench-timers")
    await publisher.start()
    service = TimerService(
        store,
        publisher,
        settings.topics.commands,
        tick_seconds=settings.timers_tick_seconds,
        fire_batch=settings.timers_fire_batch,
    )
    service.stats.lateness_window = deque()  # keep every sample
    try:
        await service.assign(range(PARTITIONS))
        # Timer i falls due at first_due + i / rate.
        base = now_ns()
        first_due = base + int(lead_s * 1e9)
        began = time.perf_counter()
        for start in range(0, total, BATCH):
            events = []
            for n in range(start, min(start + BATCH, total)):
                due = first_due + int(n / rate * 1e9)
                events.append((n % PARTITIONS, started(n, base, (due - base) / 1e9)))
            await service.apply(events)
        stored_s = time.perf_counter() - began
        print(f"stored {total:,} timers in {stored_s:.1f}s ({total / stored_s:,.0f}/s)")

        service.revoke(range(PARTITIONS))
        began = time.perf_counter()
        await service.assign(range(PARTITIONS))
        load_s = time.perf_counter() - began
        print(f"loaded them back (a rebalance taking every partition) in {load_s:.1f}s")
        pending = len(service.pending)
        wait_s = (first_due - now_ns()) / 1e9
        if wait_s < 0:
            print(f"WARNING: storing and loading overran the lead by {-wait_s:.1f}s; raise --lead")
        print(f"{pending:,} pending; first due in {wait_s:.1f}s, last {total / rate:.0f}s later")

        firing = asyncio.create_task(service.run_firing())
        began = time.perf_counter()
        while service.stats.fired_total < total:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.5)
        fire_s = time.perf_counter() - began - max(wait_s, 0)
        for _ in range(60):  # fired timers are deleted from the store off the firing path
            if await store.count() == 0:
                break
            await asyncio.sleep(0.5)
        firing.cancel()
        lateness = sorted(service.stats.lateness_window)
        p99 = lateness[int(0.99 * len(lateness))]
        print(
            f"fired {total:,} in {fire_s:.1f}s after the first was due "
            f"({total / fire_s:,.0f}/s at a due rate of {rate:,.0f}/s)\n"
            f"lateness p50 {statistics.median(lateness) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {lateness[-1] * 1000:.0f} ms "
            f"(goal p99 <= 1000 ms: {'met' if p99 <= 1.0 else 'NOT met'})"
        )
        left = await store.count()
        print(f"timers left in the store: {left}")
    finally:
        await publisher.stop()
        await client.drop_database(settings.mongo_database)
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="timers due per second")
    parser.add_argument(
        "--lead", type=float, default=150.0, help="seconds from the start to the first due"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-timers-") as tmp,
        bench_servers(Path(tmp)) as (kafka, mongo, _),
    ):
        asyncio.run(run(kafka, mongo, args.timers, args.rate, args.lead))


if __name__ == "__main__":
    main()
