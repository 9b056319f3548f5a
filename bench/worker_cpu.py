"""The worker's own CPU per first workflow task, in process: `Worker.handle` on batches of
the one-activity workflow's first tasks (bench/bench_workflows.py), with a producer that
only keeps what it is given (no Kafka). What bench/workers.py's worker row costs besides
aiokafka's fetches, produces and commits.

    .venv/bin/python bench/worker_cpu.py [--tasks 15000] [--batch 10] [--profile]

Prints CPU µs per task (process CPU time, best and median of the rounds). The garbage
collector is tuned as in `runstore worker` (services/common/runtime.py `tune_gc`), and a
round is longer than the worker's cache (2,000 runs) so that it measures the steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import uvloop  # noqa: E402
from bench_workflows import BenchOneActivity, bench_activity  # noqa: E402

from runstore.workflows import Worker  # noqa: E402
from schemas.tasks import WorkflowTask  # noqa: E402
from services.common.runtime import tune_gc  # noqa: E402
from services.common.settings import WorkerSettings  # noqa: E402


class KeepingProducer:
    """What the worker's reporter needs of an AIOKafkaProducer, keeping the records."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: bytes, value: bytes, headers: Any = None) -> None:
        self.sent.append(value)

    async def send_and_wait(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append(value)

    async def flush(self) -> None:
        return None


def first_task(n: int) -> bytes:
    execution_id = str(uuid.uuid4())
    return (
        WorkflowTask(
            task_id=f"{execution_id}:1:0",
            kind="run",
            execution_id=execution_id,
            run_id=str(uuid.uuid4()),
            seq=1,
            workflow_name="bench-one-activity",
            attempt=1,
            input={"n": n},
            timestamp_ns=time.time_ns(),
        )
        .model_dump_json()
        .encode()
    )


async def rounds(tasks: int, batch: int, count: int) -> list[float]:
    worker = Worker([BenchOneActivity], [bench_activity], settings=WorkerSettings())
    producer = KeepingProducer()
    worker.attach(None, producer)  # type: ignore[arg-type]  # first tasks read no history
    out = []
    for _ in range(count):
        records = [first_task(n) for n in range(tasks)]
        began = time.process_time()
        for start in range(0, tasks, batch):
            await worker.handle(records[start : start + batch])
        out.append((time.process_time() - began) / tasks * 1e6)
        assert len(producer.sent) >= tasks
        producer.sent.clear()
        worker.forget_all()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=15000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="with --profile: tottime or cumulative")
    args = parser.parse_args()
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(rounds(500, args.batch, 1))  # warm up
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            runner.run(rounds(args.tasks, args.batch, 1))
            prof.disable()
            pstats.Stats(prof).sort_stats(args.sort).print_stats(45)
            return 0
        per_task = sorted(runner.run(rounds(args.tasks, args.batch, args.rounds)))
    best, median = per_task[0], per_task[len(per_task) // 2]
    print(f"worker CPU per first task: best {best:.1f} µs, median {median:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
