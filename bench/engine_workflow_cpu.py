"""The engine's own CPU per one-activity workflow at a worker's batch sizes, in process.

    .venv/bin/python bench/engine_workflow_cpu.py [REPO] [--workflows 4] [--ticks 3000]
        [--rounds 5]

bench/engine_batches.py measures the engine process on real servers, where aiokafka,
PyMongo and the event loop take most of its CPU and the box's load moves every figure by
±5%. This bench runs only the engine's own code, steadier: the workers bench's commands
(bench/engine_batches.py: each tick `--workflows` `StartWorkflow`s and the
`CompleteWorkflowTask` of each workflow started the tick before) through the real
`EnginePipeline` and `CommandProcessor` on the in-memory store, with what the engine does
around them per batch: the records it publishes (`outgoing_records`, each appended to an
aiokafka batch as `RecordPublisher` does, without sending), the commit documents it would
insert (`commit_to_doc`, BSON-encoded), the batch's metrics and its garbage-collection
policy. Prints the process's CPU time per workflow, best of `--rounds` and all rounds.

`REPO` runs another checkout's engine under this same bench, for alternating runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("repo", nargs="?", default=str(HERE))
parser.add_argument("--workflows", type=int, default=4, help="started per tick (batch)")
parser.add_argument("--ticks", type=int, default=3000)
parser.add_argument("--rounds", type=int, default=5)
args = parser.parse_args()
sys.path.insert(0, str(HERE / "bench"))
sys.path.insert(0, str(Path(args.repo).resolve()))

import bson  # noqa: E402
from aiokafka.producer.message_accumulator import BatchBuilder  # noqa: E402
from engine_batches import complete_command, start_command  # noqa: E402
from pipeline_fakes import Consumer, Position  # noqa: E402

from services.common.commit_log import commit_to_doc  # noqa: E402
from services.common.runtime import BatchCollector, tune_gc  # noqa: E402
from services.common.settings import Topics  # noqa: E402
from services.engine.app import count_outbound, outgoing_records  # noqa: E402
from services.engine.memory_event_store import MemoryEventStore  # noqa: E402
from services.engine.pipeline import EnginePipeline  # noqa: E402
from services.engine.processor import CommandProcessor, InboundRecord, StateCache  # noqa: E402

PARTITIONS = 12


class EncodingStore(MemoryEventStore):
    """The in-memory store, encoding each appended round's documents as the Mongo store
    does (its request's BSON)."""

    async def append_round(self, firsts: Sequence[Any], rest: Sequence[Any]) -> Any:
        for commit in (*firsts, *rest):
            bson.encode(commit_to_doc(commit))
        return await super().append_round(firsts, rest)


def batches(ticks: int, workflows: int, run: str) -> list[list[InboundRecord]]:
    """Each tick's commands as Kafka would deliver them (offsets per partition)."""
    offsets = [0] * PARTITIONS
    out: list[list[InboundRecord]] = []
    pending: list[tuple[str, str, int]] = []
    n = 0
    for _ in range(ticks + 1):
        commands: list[dict[str, Any]] = [complete_command(*p) for p in pending]
        pending = []
        for _ in range(workflows):
            execution_id = f"w-{run}-{n}"
            start_id, start = start_command(execution_id, n)
            commands.append(start)
            pending.append((execution_id, start_id, n))
            n += 1
        batch = []
        for c in commands:
            key = c["execution_id"].encode()
            partition = hash(key) % PARTITIONS
            batch.append(InboundRecord(partition, offsets[partition], key, json.dumps(c).encode()))
            offsets[partition] += 1
        out.append(batch)
    return out


async def one_round(work: list[list[InboundRecord]], collector: BatchCollector) -> float:
    topics = Topics.with_prefix("")
    processor = CommandProcessor(EncodingStore(), StateCache(1_000_000), time.time_ns)
    published = 0

    async def publish(out: Any) -> None:
        nonlocal published
        builders: dict[tuple[str, int], BatchBuilder] = {}
        for r in outgoing_records(count_outbound(out), topics, []):
            key = r.key.encode()
            builder = builders.get((r.topic, hash(key) % PARTITIONS))
            if builder is None:
                builder = builders[(r.topic, hash(key) % PARTITIONS)] = BatchBuilder(
                    256 * 1024, 0, is_transactional=False
                )
            headers = [(k, v.encode()) for k, v in r.headers.items()] if r.headers else []
            builder.append(timestamp=None, key=key, value=r.value, headers=headers)
        for builder in builders.values():
            builder.close()
            builder._build()
        published += len(out.outcomes)

    pipeline = EnginePipeline(processor, publish, 0.0, commit_every_s=0.1)
    consumer = Consumer()
    started = time.process_time()
    for batch in work:
        await pipeline.submit(consumer, [Position(r) for r in batch], batch)
        collector.after_batch()
        # The store and the publish run in tasks: let them, as the next fetch would.
        for _ in range(6):
            await asyncio.sleep(0)
    await pipeline.drain()
    spent = time.process_time() - started
    expected = sum(len(b) for b in work)
    assert published == expected, f"{published} of {expected} commands answered"
    return spent


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)  # a failing publish would say why
    tune_gc()
    collector = BatchCollector()
    collector.start()
    spent: list[float] = []
    for r in range(args.rounds):
        work = batches(args.ticks, args.workflows, run=f"r{r}")
        gc.collect()
        spent.append(await one_round(work, collector))
    workflows = args.ticks * args.workflows + args.workflows
    per = [s / workflows * 1e6 for s in spent]
    print(
        f"engine's own CPU per workflow ({args.workflows} per batch, {workflows} workflows; "
        f"{args.repo}): best {min(per):.1f} µs; rounds " + ", ".join(f"{p:.1f}" for p in per)
    )


if __name__ == "__main__":
    asyncio.run(main())
