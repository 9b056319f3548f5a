"""Engine throughput and command→commit latency on real Kafka and the MongoDB-protocol server.

    .venv/bin/python bench/engine_throughput.py [--commands 20000] [--warmup 10000] [--profile]
        [--rate R] [--timeline MS] [--per-record]

Uses RUNSTORE_KAFKA_BOOTSTRAP / RUNSTORE_MONGO_URL when set, else starts local servers
(deploy/local/infra.py) on free ports. Prints, in one run:

- baselines: a pass-through Kafka consumer draining the same records, and raw
  `insert_many` of commit-sized documents into the same database server;
- drain: the engine started on a backlog of warm-up commands followed by N measured ones
  (40% starts of new executions, 50% signals, 10% cancels); from the first measured
  outcome to the last → commands/s, that rate as a ratio of each baseline, and the CPU
  each process (engine, Kafka, database) spent per command meanwhile, with the rate the
  box's cores would allow at that cost;
- latency: commands produced at a steady rate (half the drain rate), p50/p99 from when
  each was due to be sent to the engine's outcome (which is published after the commit),
  the CPU per command of each process in that phase (this one's too: its producer and
  outcome reader share the cores), and where the engine's batches spent that phase
  (`runstore_engine_batch_stage_seconds`). The commands go every 10 ms in ready-built
  batches, as the API's command window sends a steady stream (`--per-record`: one `send`
  each).

`--profile` runs the drained engine under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import pstats
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cpu_meter import CollectorPasses, CpuMeter  # noqa: E402
from engine_metrics import delta, scrape, stage_table  # noqa: E402
from servers import bench_servers, infra  # noqa: E402

from services.common.kafka_io import murmur2  # noqa: E402
from services.common.kafka_topics import ensure_topics  # noqa: E402
from services.common.settings import RunstoreSettings  # noqa: E402


@contextmanager
def servers() -> Iterator[tuple[str, str, dict[str, int]]]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="runstore-bench-")))
        yield stack.enter_context(bench_servers(tmp))


def workload(n: int, rng: random.Random) -> list[dict[str, Any]]:
    commands: list[dict[str, Any]] = []
    running: list[str] = []
    while len(commands) < n:
        roll = rng.random()
        if roll < 0.4 or not running:
            eid = f"b-{uuid.uuid4().hex[:12]}"
            running.append(eid)
            commands.append(_cmd("StartWorkflow", eid, workflow_name="bench", input={"k": 1}))
        elif roll < 0.9:
            eid = rng.choice(running)
            commands.append(_cmd("SignalExecution", eid, name="tick", input={"v": len(commands)}))
        else:
            eid = running.pop(rng.randrange(len(running)))
            commands.append(_cmd("CancelExecution", eid, reason="bench"))
    return commands


def _cmd(kind: str, execution_id: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "command_id": str(uuid.uuid4()),
        "execution_id": execution_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "user_id": "bench",
        "payload": payload,
    }


async def produce(bootstrap: str, topic: str, commands: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, json.dumps(c).encode(), key=c["execution_id"].encode())
            for c in commands
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def tail(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    consumer.subscribe([topic])
    while not consumer.assignment():
        await asyncio.sleep(0.05)
        await consumer.getmany(timeout_ms=50)
    tps = list(consumer.assignment())
    consumer.unsubscribe()
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


class OutcomeReader:
    """Reads outcome (or command) records, counting distinct command ids across calls."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.seen: set[str] = set()

    async def until(
        self,
        total: int,
        on_record: Any = None,
        limit: float = 600,
        engine: subprocess.Popen[bytes] | None = None,
    ) -> None:
        started = time.monotonic()
        while len(self.seen) < total:
            if time.monotonic() - started > limit:
                raise SystemExit(f"gave up after {limit}s with {len(self.seen)}/{total}")
            if engine is not None and engine.poll() is not None:
                raise SystemExit(f"the engine exited ({engine.returncode}); see its log")
            batch = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    body = json.loads(r.value)
                    key = body.get("command_id") or f"{r.partition}:{r.offset}"
                    if key in self.seen:
                        continue
                    self.seen.add(key)
                    if on_record:
                        on_record(body)


_TICK_S = 0.010
"""The batched producer's window: what is due goes every 10 ms, as the API's command window
sends commands that keep coming at a steady pace (each window ends at its linger,
`RUNSTORE_API_PUBLISH_LINGER_MS`, 10; services/api/command_window.py)."""


async def send_ticks(
    producer: AIOKafkaProducer,
    topic: str,
    commands: list[dict[str, Any]],
    rate: float,
    sent_at: dict[str, float],
) -> None:
    """Send `commands` at `rate`: at each `_TICK_S` boundary what is due, as one
    ready-built, closed batch per partition (the API's way, with a producer of no linger:
    the batches of a tick go in one request). The records are encoded before the clock
    starts: the generator should cost the box as little as it can."""
    encoded = [
        (c["command_id"], c["execution_id"].encode(), json.dumps(c).encode()) for c in commands
    ]
    partitions = sorted(await producer.partitions_for(topic))
    acks: list[asyncio.Future[Any]] = []
    t0 = time.monotonic()
    sent, tick = 0, 0
    while sent < len(encoded):
        due = min(len(encoded), int((time.monotonic() - t0) * rate) + 1)
        batches: dict[int, Any] = {}
        for j in range(sent, due):
            command_id, key, value = encoded[j]
            sent_at[command_id] = t0 + j / rate
            partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            batch = batches.get(partition)
            if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                if batch is not None:  # full: it goes, and a new one takes the record
                    batch.close()
                    acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for partition, batch in batches.items():
            batch.close()
            acks.append(await producer.send_batch(batch, topic, partition=partition))
        sent = due
        tick = max(tick + 1, int((time.monotonic() - t0) / _TICK_S) + 1)
        await asyncio.sleep(max(0.0, t0 + tick * _TICK_S - time.monotonic()))
    await asyncio.gather(*acks)


async def send_each(
    producer: AIOKafkaProducer,
    topic: str,
    commands: list[dict[str, Any]],
    rate: float,
    sent_at: dict[str, float],
) -> None:
    """Send `commands` at `rate` one `send` each (aiokafka's linger of 1 ms): the earlier
    generator, which cost this process ~0.15 cores more at 2,900/s
    (docs/engine-performance.md, nineteenth session)."""
    t0 = time.monotonic()
    for i, c in enumerate(commands):
        due = t0 + i / rate
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        sent_at[c["command_id"]] = due
        await producer.send(topic, json.dumps(c).encode(), key=c["execution_id"].encode())
    await producer.flush()


def start_engine(env: dict[str, str], log: Path, profile: Path | None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", str(profile)]
        cmd += ["-m", "services.cli", "engine"]
    else:
        cmd += ["-m", "services.cli", "engine"]
    return subprocess.Popen(
        cmd, env={**os.environ, **env}, cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def baseline_kafka(bootstrap: str, commands: list[dict[str, Any]], prefix: str) -> float:
    """Records/s a pass-through consumer drains from a backlog of the same records."""
    topic = f"{prefix}workflows.commands"
    reader = OutcomeReader(await tail(bootstrap, topic))
    started = time.monotonic()
    try:
        await reader.until(len(commands))
    finally:
        await reader.consumer.stop()
    return len(commands) / (time.monotonic() - started)


async def baseline_mongo(mongo: str, n: int) -> float:
    """Documents/s of raw insert_many (batches of 500) of documents shaped like the engine's
    commits (flat fields, a ~1.3 kB JSON body, unique command_id), into the same server.
    Ids are random, as execution and command ids are: on FerretDB (SQLite B-trees)
    sequential ids insert about twice as fast, which would flatter the baseline."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo)
    db = client[f"bench_raw_{uuid.uuid4().hex[:8]}"]
    await db.raw.create_index("command_id", unique=True)
    body = json.dumps({"events": [{"type": "SIGNALED", "x": "y" * 500}], "state": "v" * 700})
    started = time.monotonic()
    for i in range(0, n, 500):
        await db.raw.insert_many(
            [
                {
                    "_id": f"{e}:000000000001",
                    "execution_id": e,
                    "seq": 1,
                    "command_id": uuid.uuid4().hex,
                    "command_type": "SignalExecution",
                    "run_id": f"r{e}",
                    "committed_at": datetime.now(UTC),
                    "body": body,
                }
                for e in (uuid.uuid4().hex for _ in range(i, min(n, i + 500)))
            ]
        )
    seconds = time.monotonic() - started
    await client.drop_database(db.name)
    await client.close()
    return n / seconds


def print_timeline(timeline: list[tuple[float, float]], window_s: float) -> None:
    """The steady phase's latency by when each command was sent, one line per window:
    a stall shows as the windows whose worst latency stands out."""
    t0 = min(sent for sent, _ in timeline)
    windows: dict[int, list[float]] = {}
    for sent, latency in timeline:
        windows.setdefault(int((sent - t0) / window_s), []).append(latency * 1000)
    print(f"\n  {'sent at (s)':>11} {'commands':>8} {'p50 ms':>8} {'max ms':>8}")
    for w in sorted(windows):
        ms = sorted(windows[w])
        print(f"  {w * window_s:11.2f} {len(ms):8d} {ms[len(ms) // 2]:8.1f} {ms[-1]:8.1f}")


async def run(
    n: int,
    warmup_n: int,
    profile: bool,
    steady_rate: float | None = None,
    timeline_ms: float = 0,
    per_record: bool = False,
) -> None:
    rng = random.Random(7)
    with servers() as (bootstrap, mongo, server_pids):
        tag = uuid.uuid4().hex[:8]
        env = {
            "RUNSTORE_KAFKA_BOOTSTRAP": bootstrap,
            "RUNSTORE_MONGO_URL": mongo,
            "RUNSTORE_MONGO_DATABASE": f"bench_{tag}",
            "RUNSTORE_TOPIC_PREFIX": f"bench{tag}.",
            "RUNSTORE_LOG_LEVEL": os.environ.get("BENCH_ENGINE_LOG_LEVEL", "WARNING"),
            "RUNSTORE_ENGINE_HEALTH_PORT": str(health := infra.free_port()),
        }
        settings = RunstoreSettings(
            kafka_bootstrap=bootstrap, topic_prefix=env["RUNSTORE_TOPIC_PREFIX"]
        )
        await ensure_topics(settings)
        # One backlog: the warm-up's commands first in every partition, then the measured
        # ones. The warm-up brings the engine, Kafka's JVM (JIT) and the database's caches
        # to a steady state; only the measured commands' outcomes are timed.
        warmup = workload(warmup_n, rng)
        commands = workload(n, rng)
        await produce(bootstrap, settings.topics.commands, warmup + commands)
        kafka_rate = await baseline_kafka(
            bootstrap, warmup + commands, settings.topics.commands[: -len("workflows.commands")]
        )
        mongo_rate = await baseline_mongo(mongo, min(n, 20000))

        log = Path(tempfile.mkstemp(prefix="engine-", suffix=".log")[1])
        print(f"  engine log: {log}")
        prof = Path(tempfile.mkstemp(suffix=".prof")[1]) if profile else None
        outcomes = OutcomeReader(await tail(bootstrap, settings.topics.outcomes))
        engine = start_engine(env, log, prof)
        cpu = CpuMeter({"engine": engine.pid, **server_pids})
        measured = {c["command_id"] for c in commands}
        span: list[float] = []  # when the first and the latest measured outcome came

        def timed(body: dict[str, Any]) -> None:
            if body["command_id"] in measured:
                if not span:
                    cpu.begin()
                    span.append(time.monotonic())
                span[1:] = [time.monotonic()]

        try:
            # Timed from the first measured outcome: start-up and warm-up are not counted.
            await outcomes.until(len(warmup) + n, timed, engine=engine)
            cpu.end()
            rate = (n - 1) / (span[-1] - span[0])

            # Steady load at half the drain rate: latency without a backlog.
            # Out of this process's collector's sight first: a full collection over the
            # workloads and outcome ids held here took 0.4-0.5 s (measured on a busy box),
            # stopping the loop that sends the commands and reads their outcomes.
            gc.collect()
            gc.freeze()
            pauses = CollectorPasses()
            latencies: list[float] = []
            timeline: list[tuple[float, float]] = []  # (sent at, latency)
            sent_at: dict[str, float] = {}
            steady = workload(min(n // 2, int(rate * 10)), rng)
            target = steady_rate or max(100.0, rate / 2)

            async def steady_producer() -> None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=bootstrap,
                    enable_idempotence=True,
                    linger_ms=1 if per_record else 0,
                )
                await producer.start()
                try:
                    if per_record:
                        await send_each(producer, settings.topics.commands, steady, target, sent_at)
                    else:
                        await send_ticks(
                            producer, settings.topics.commands, steady, target, sent_at
                        )
                finally:
                    await producer.stop()

            def on_outcome(body: dict[str, Any]) -> None:
                if body["command_id"] in sent_at:
                    sent = sent_at[body["command_id"]]
                    latencies.append(time.monotonic() - sent)
                    timeline.append((sent, latencies[-1]))

            before = scrape(health)
            # The steady phase's CPU, this process too: its producer and outcome reader
            # share the two cores with the engine and the servers, and so its latencies.
            steady_cpu = CpuMeter({**cpu.pids, _BENCH: os.getpid()}, alone=_BENCH)
            steady_cpu.begin()
            steady_began = time.monotonic()
            await asyncio.gather(
                steady_producer(),
                outcomes.until(len(warmup) + n + len(steady), on_outcome, engine=engine),
            )
            steady_cpu.end()
            steady_seconds = time.monotonic() - steady_began
            pauses.stop()
            stages = delta(scrape(health), before)
            if timeline_ms:
                print_timeline(timeline, timeline_ms / 1000)
        finally:
            await outcomes.consumer.stop()
            stop(engine)
        latencies.sort()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

        print(
            f"\nengine throughput — {n} commands (40% start, 50% signal, 10% cancel) after "
            f"{len(warmup)} of warm-up, one engine"
        )
        print(f"  servers: kafka {bootstrap}, mongo {mongo}")
        print(f"  {'measure':44} {'value':>12}")
        print(f"  {'baseline: Kafka pass-through consumer':44} {kafka_rate:10.0f}/s")
        print(f"  {'baseline: raw insert_many (commit-shaped docs)':44} {mongo_rate:10.0f}/s")
        print(f"  {'engine drain (backlog)':44} {rate:10.0f}/s")
        print(f"  {'  ratio to Kafka pass-through':44} {rate / kafka_rate:11.2f}x")
        print(f"  {'  ratio to raw inserts':44} {rate / mongo_rate:11.2f}x")
        for name, used in cpu.used.items():
            label = f"  CPU per command during the drain: {name}"
            print(f"{label:46} {used / n * 1e6:9.0f} µs")
        total = sum(cpu.used.values())
        cores = os.cpu_count() or 1
        print(f"{'  CPU per command, all of the above':46} {total / n * 1e6:9.0f} µs")
        print(f"{f'    → {cores} cores could do at most':46} {cores * n / total:10.0f}/s")
        generator = "one send each" if per_record else f"batches every {_TICK_S * 1000:g} ms"
        print(f"  {'steady load offered':44} {target:10.0f}/s ({generator})")
        print(f"  {'command→outcome latency p50':44} {pct(0.50):9.1f} ms")
        print(f"  {'command→outcome latency p99':44} {pct(0.99):9.1f} ms")
        print(f"  {'  this process collecting meanwhile, longest':44} {pauses.longest_ms:9.1f} ms")
        print(f"  steady phase's CPU per command (cores busy), {len(steady)} commands:")
        for name, used in steady_cpu.used.items():
            busy = used / steady_seconds
            print(f"{f'    {name}':46} {used / len(steady) * 1e6:9.0f} µs  ({busy:.2f})")
        # The engine's one consumer group is the only label set of its batch sizes.
        batches = sum(v for (k, _), v in stages.items() if k == "runstore_batch_size_count")
        if batches:
            size = sum(v for (k, _), v in stages.items() if k == "runstore_batch_size_sum")
            print(f"  steady phase: {batches:.0f} batches, {size / batches:.1f} commands each:")
            print("\n".join(stage_table(stages)))
        if prof:
            print("\nwhere the engine's time goes (cumulative, top 30):")
            pstats.Stats(str(prof)).sort_stats(
                os.environ.get("BENCH_PROFILE_SORT", "cumulative")
            ).print_stats(int(os.environ.get("BENCH_PROFILE_TOP", "30")))


_BENCH = "bench (producer, outcome reader)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument(
        "--warmup", type=int, default=10000, help="commands drained first, not measured"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--timeline",
        type=float,
        default=0,
        metavar="MS",
        help="also print the steady phase's latency per window of MS ms of send time",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="steady load of the latency phase (default: half the drain rate); a fixed rate "
        "compares latencies of two builds at the same load",
    )
    parser.add_argument(
        "--per-record",
        action="store_true",
        help="the latency phase's commands sent one aiokafka `send` each (the earlier "
        "generator) instead of every 10 ms in ready-built batches",
    )
    args = parser.parse_args()
    asyncio.run(
        run(args.commands, args.warmup, args.profile, args.rate, args.timeline, args.per_record)
    )


if __name__ == "__main__":
    main()
