"""The engine's CPU per workflow at a worker's batch sizes, with nothing else of the stack.

    .venv/bin/python bench/engine_batches.py [REPO] [--workflows 4] [--interval-ms 25]
        [--seconds 15] [--warmup 3]

bench/workers.py measures the whole stack (API, worker, projector, timers) in a closed
loop: the engine's CPU per workflow there moves with the box's load and with the batch
sizes that load makes. This bench feeds the engine alone, on real Kafka and the
MongoDB-protocol server (started on free ports, or the ones RUNSTORE_KAFKA_BOOTSTRAP and
RUNSTORE_MONGO_URL name), the commands of the workers bench's one-activity workflow at a
fixed pace: every `--interval-ms`, `--workflows` new `StartWorkflow`s and the
`CompleteWorkflowTask` (activity started, completed, complete) of each workflow started
one tick before, as the worker sends it. So each consumed batch is about
2 x `--workflows` commands, as in the workers bench (~8 commands a batch at ~180
commands/s). It waits for every command's outcome and prints the engine's CPU (user +
system, from /proc) per workflow over the measured window, and Kafka's and the
database's.

`REPO` (default: this checkout) runs another checkout's engine (`python -m services.cli
engine` in it) under this same bench, so alternating runs compare two versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "bench"))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from cpu_meter import CpuMeter  # noqa: E402
from servers import bench_servers  # noqa: E402

from services.common.ids import derived_id  # noqa: E402


def start_command(execution_id: str, n: int) -> tuple[str, dict[str, Any]]:
    """What the API sends for `POST /v1/workflows/bench-one-activity/execute`."""
    command_id = str(uuid.uuid4())
    return command_id, {
        "command_id": command_id,
        "execution_id": execution_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "user_id": "bench",
        "schema_version": 1,
        "type": "StartWorkflow",
        "payload": {"workflow_name": "bench-one-activity", "input": {"n": n}},
    }


def complete_command(execution_id: str, start_id: str, n: int) -> dict[str, Any]:
    """What the worker sends once the bench workflow's activity returned (its first and
    only task: the activity started and completed, then the run completes)."""
    run_id = derived_id(start_id, "run")  # as the engine derives it (services/engine/context.py)
    return {
        "command_id": f"wft:{run_id}:1",
        "execution_id": execution_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "user_id": None,
        "schema_version": 1,
        "type": "CompleteWorkflowTask",
        "payload": {
            "run_id": run_id,
            "task_seq": 1,
            "worker_id": None,
            "steps": [
                {
                    "kind": "activity",
                    "activity_id": "a1",
                    "activity_name": "bench_activity",
                    "stage": "started",
                    "attempt": 1,
                    "input": {"n": n},
                    "result": None,
                    "failure": None,
                },
                {
                    "kind": "activity",
                    "activity_id": "a1",
                    "activity_name": "bench_activity",
                    "stage": "completed",
                    "attempt": 1,
                    "input": None,
                    "result": n + 1,
                    "failure": None,
                },
                {"kind": "complete", "result": n + 1},
            ],
        },
    }


class Outcomes:
    """Counts the outcomes on the outcomes topic (accepted or not) from its end."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        self.seen = 0
        self.rejected = 0
        self.changed = asyncio.Event()

    async def run(self) -> None:
        await self.consumer.start()
        try:
            while True:
                batches = await self.consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self.seen += 1
                        if b'"accepted":false' in (record.value or b""):
                            self.rejected += 1
                self.changed.set()
        finally:
            await self.consumer.stop()

    async def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.seen < count:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.seen} of {count} outcomes")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


async def drive(args: argparse.Namespace, bootstrap: str, prefix: str, cpu: CpuMeter) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    outcomes = Outcomes(bootstrap, f"{prefix}workflows.outcomes")
    watching = asyncio.create_task(outcomes.run())
    topic = f"{prefix}workflows.commands"
    run = uuid.uuid4().hex[:6]
    sent = 0
    counter = iter(range(10**9))

    async def send(commands: list[dict[str, Any]]) -> None:
        nonlocal sent
        acks = [
            await producer.send(topic, json.dumps(c).encode(), key=c["execution_id"].encode())
            for c in commands
        ]
        await asyncio.gather(*acks)
        sent += len(commands)

    try:
        # The engine is up once it answers a first workflow (it creates the topics).
        first = f"w-{run}-warm"
        start_id, start = start_command(first, 0)
        for _ in range(240):
            try:
                await send([start])
                break
            except Exception:
                await asyncio.sleep(0.5)
        await outcomes.wait_for(1, 120)
        await send([complete_command(first, start_id, 0)])
        await outcomes.wait_for(2, 60)

        pending: list[tuple[str, str, int]] = []
        measured = 0
        began = time.monotonic()
        measuring_from = began + args.warmup
        ends = measuring_from + args.seconds
        tick = began
        while True:
            now = time.monotonic()
            if now >= ends:
                break
            if not cpu.running and now >= measuring_from:
                await outcomes.wait_for(sent, 30)  # the warm-up's commands are answered
                cpu.begin()
                measured = 0
            batch: list[dict[str, Any]] = [complete_command(*p) for p in pending]
            measured += len(pending)
            pending = []
            for _ in range(args.workflows):
                n = next(counter)
                execution_id = f"w-{run}-{n}"
                start_id, start = start_command(execution_id, n)
                batch.append(start)
                pending.append((execution_id, start_id, n))
            await send(batch)
            tick += args.interval_ms / 1000
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        await send([complete_command(*p) for p in pending])
        measured += len(pending)
        await outcomes.wait_for(sent, 60)
        cpu.end()
        print(
            f"engine alone: {measured} workflows completed in the measured window "
            f"({args.workflows} started every {args.interval_ms} ms; {outcomes.rejected} "
            "rejections)"
        )
        for name, seconds in cpu.used.items():
            print(f"  {name:12} {seconds * 1e6 / max(measured, 1):8.1f} µs CPU per workflow")
    finally:
        watching.cancel()
        await producer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", nargs="?", default=str(HERE))
    parser.add_argument("--workflows", type=int, default=4, help="started per tick")
    parser.add_argument("--interval-ms", type=float, default=25.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # topics not there yet
    repo = Path(args.repo).resolve()
    with (
        tempfile.TemporaryDirectory(prefix="runstore-engine-batches-") as tmp,
        ExitStack() as stack,
    ):
        work = Path(tmp)
        kafka, mongo, pids = stack.enter_context(bench_servers(work))
        tag = uuid.uuid4().hex[:8]
        prefix = f"bench{tag}."
        env = {
            **os.environ,
            "PYTHONPATH": str(repo),
            "RUNSTORE_KAFKA_BOOTSTRAP": kafka,
            "RUNSTORE_MONGO_URL": mongo,
            "RUNSTORE_MONGO_DATABASE": f"bench_{tag}",
            "RUNSTORE_TOPIC_PREFIX": prefix,
            "RUNSTORE_LOG_LEVEL": "WARNING",
            "RUNSTORE_ENGINE_HEALTH_PORT": "0",
        }
        log = (work / "engine.log").open("ab")
        engine = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "engine"],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def stop() -> None:
            os.killpg(engine.pid, signal.SIGTERM)
            try:
                engine.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(engine.pid, signal.SIGKILL)

        stack.callback(stop)
        cpu = CpuMeter({"engine": engine.pid, **pids, "bench": os.getpid()}, alone="bench")
        asyncio.run(drive(args, kafka, prefix, cpu))
        print(f"  ({repo})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
