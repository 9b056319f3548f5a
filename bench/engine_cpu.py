"""The engine's CPU per command, without I/O: where one core's time goes per command.

    .venv/bin/python bench/engine_cpu.py [REPO] [--commands 30000] [--batch 2000] [--rounds 3]
        [--clock cpu|wall] [--starts]

Runs the same workload as bench/engine_throughput.py (40% starts, 50% signals, 10%
cancels) through the engine's own code, in process, with the engine's garbage-collection
policy: `CommandProcessor` on the in-memory event store (parse and decide, store, complete), the
records the engine publishes
(`outgoing_records`, serialised as it sends them), and the documents it would insert
(`commit_to_doc`, BSON-encoded as PyMongo does). Prints µs per command for each stage and
in all, best of `--rounds`; the ceiling it implies for one engine on one core is
1e6 / total. Kafka, MongoDB and the event loop's own overhead are not in it: compare with
the drain rate of bench/engine_throughput.py for what they add.

`--starts`: every command a StartWorkflow of a new execution, as `bench/http_gateway.py`'s
POST execute sends them (run it with `--batch 28` for the closed loop's batches): the
engine's work per HTTP start.

`--clock cpu` (the default) counts the process's CPU time, which other processes on a
busy box disturb far less than the elapsed time that `--clock wall` counts. `REPO`
(default: this checkout) runs another checkout's engine under this same bench, so
alternating runs compare two versions of the code.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bson


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--commands", type=int, default=30000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--starts", action="store_true", help="starts only (HTTP starts)")
    return parser.parse_args()


# Only when run: bench/engine_pipeline_latency.py imports `records` from here, with its
# own arguments and its own checkout on the path.
args = _arguments() if __name__ == "__main__" else None
REPO = Path(args.repo).resolve() if args else Path(__file__).resolve().parents[1]
if args:
    # REPO's own workload module: importing it puts its checkout first on the path again.
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO))
CLOCK = time.perf_counter if args and args.clock == "wall" else time.process_time

from engine_throughput import _cmd, workload  # noqa: E402

from services.common.commit_log import commit_to_doc  # noqa: E402
from services.common.runtime import BatchCollector, tune_gc  # noqa: E402
from services.common.settings import Topics  # noqa: E402
from services.engine.app import count_outbound, outgoing_records  # noqa: E402
from services.engine.memory_event_store import MemoryEventStore  # noqa: E402
from services.engine.processor import (  # noqa: E402
    CommandProcessor,
    InboundRecord,
    StateCache,
)

PARTITIONS = 12


def records(n: int, seed: int) -> list[list[InboundRecord]]:
    """The workload as Kafka would deliver it: per partition, in offset order."""
    by_partition: dict[int, list[InboundRecord]] = {p: [] for p in range(PARTITIONS)}
    if args is not None and args.starts:
        commands = [
            _cmd("StartWorkflow", f"h-{seed}-{i}", workflow_name="bench", input={"n": 1})
            for i in range(n)
        ]
    else:
        commands = workload(n, random.Random(seed))
    for command in commands:
        key = command["execution_id"].encode()
        partition = zlib.crc32(key) % PARTITIONS
        offset = len(by_partition[partition])
        value = json.dumps(command).encode()
        by_partition[partition].append(InboundRecord(partition, offset, key, value))
    return [rs for rs in by_partition.values() if rs]


class Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = CLOCK()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + CLOCK() - started


async def one_round(
    partitions: list[list[InboundRecord]], batch: int, collector: BatchCollector
) -> dict[str, float]:
    processor = CommandProcessor(MemoryEventStore(), StateCache(1_000_000), time.time_ns)
    topics = Topics.with_prefix("")
    stages = Stages()
    # Batches as the consumer hands them over: a slice of each partition in turn.
    per_partition = max(1, batch // len(partitions))
    cursors = [0] * len(partitions)
    while any(c < len(p) for c, p in zip(cursors, partitions, strict=True)):
        chunk: list[InboundRecord] = []
        for i, part in enumerate(partitions):
            chunk.extend(part[cursors[i] : cursors[i] + per_partition])
            cursors[i] += per_partition
        with stages.timed("decide"):
            decision = await processor.decide(processor.parse(chunk))
        with stages.timed("store (in memory)"):
            stored = await processor.store(decision.round)
        with stages.timed("complete"):
            out = (await processor.complete(decision, stored)).out
        with stages.timed("commit documents (+BSON)"):
            for commit in out.commits:
                bson.encode(commit_to_doc(commit))
        with stages.timed("records to publish"):
            for record in outgoing_records(out, topics):
                record.key.encode()
        with stages.timed("metrics"):
            count_outbound(out)  # as the engine counts outcomes and dead letters per batch
        collector.after_batch()  # as the engine does after each batch
    return stages.seconds


async def main() -> None:
    assert args is not None
    tune_gc()
    collector = BatchCollector()
    collector.start()
    partitions = records(args.commands, seed=7)
    best: dict[str, float] | None = None
    for _ in range(args.rounds):
        gc.collect()
        seconds = await one_round(partitions, args.batch, collector)
        if best is None or sum(seconds.values()) < sum(best.values()):
            best = seconds
    assert best is not None
    n = args.commands
    print(
        f"engine CPU per command — {n} {'starts' if args.starts else 'commands'}, batches of"
        f" {args.batch}, best of {args.rounds}"
        f" ({args.clock} time; {REPO})"
    )
    for name, s in best.items():
        print(f"  {name:28} {s / n * 1e6:8.1f} µs")
    total = sum(best.values())
    print(f"  {'total':28} {total / n * 1e6:8.1f} µs  (one core: {n / total:,.0f} commands/s)")


if __name__ == "__main__":
    asyncio.run(main())
