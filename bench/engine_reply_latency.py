"""The engine's part of an HTTP start in a closed loop, in process: command → direct reply.

    .venv/bin/python bench/engine_reply_latency.py [REPO] [--clients 32] [--seconds 10]
        [--fetch-ms 5] [--store-ms 5] [--publish-ms 3]

`--clients` clients each send a start and wait for its direct reply, then send the next
(as bench/engine_http.py's clients do over HTTP). The real `CommandProcessor` and
`EnginePipeline` run on the memory event store, with the commit documents built and
BSON-encoded in the store as `MongoEventStore` does (on the loop), and fixed delays
standing in for the servers: a command reaches the engine `--fetch-ms` after the
first one waiting (the produce and the fetch), an insert is answered after
`--store-ms`, a publish after `--publish-ms` plus the records' encoding. The engine's
loop is handed whatever arrived when it asks for its next batch, as FastStream's
`getmany` does.

Prints starts/s, the start's p50/p99 (sent → replied) and the process's CPU per start. With no
servers in it, it shows what the engine's own loop adds to a start: its CPU on the
wave's path and what waits for it (the store's answer read late, replies held back by
the next batch's decision). `REPO` (default: this checkout) runs another checkout's
engine under this same bench, so alternating runs compare two versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

parser = argparse.ArgumentParser()
parser.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parents[1]))
parser.add_argument("--clients", type=int, default=32)
parser.add_argument("--seconds", type=float, default=10.0)
parser.add_argument("--warmup", type=float, default=2.0)
parser.add_argument("--fetch-ms", type=float, default=5.0)
parser.add_argument("--store-ms", type=float, default=5.0)
parser.add_argument("--publish-ms", type=float, default=3.0)
args = parser.parse_args()
sys.path.insert(0, args.repo)
# This bench's own helpers, whichever checkout it measures.
sys.path.insert(1, str(Path(__file__).resolve().parent))

import bson  # noqa: E402
from engine_throughput import _cmd  # noqa: E402
from pipeline_fakes import Consumer, Position  # noqa: E402

from services.common.commit_log import commit_to_doc  # noqa: E402
from services.common.runtime import tune_gc  # noqa: E402
from services.common.settings import Topics  # noqa: E402
from services.engine.app import outgoing_records  # noqa: E402
from services.engine.memory_event_store import MemoryEventStore  # noqa: E402
from services.engine.pipeline import EnginePipeline  # noqa: E402
from services.engine.processor import CommandProcessor, StateCache  # noqa: E402
from services.engine.validation import InboundRecord  # noqa: E402

TOPICS = Topics.with_prefix("")


class DelayedStore(MemoryEventStore):
    """Builds and encodes the documents as the MongoDB store does, then answers after
    `--store-ms` (the insert's round trip: the loop is free meanwhile)."""

    async def append_round(self, firsts: Sequence[Any], rest: Sequence[Any]) -> Any:
        for commit in [*firsts, *rest]:
            bson.encode(commit_to_doc(commit))
        await asyncio.sleep(args.store_ms / 1000)
        return await super().append_round(firsts, rest)


class Replies:
    """The direct replies: each outcome resolves its client's future."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[float]] = {}

    def routes(self, commands: Sequence[tuple[InboundRecord, Any]]) -> Any:
        return {c.command_id for _, c in commands}

    def send(
        self, routes: Any, outcomes: Sequence[Any], commits: Sequence[Any], *more: Any
    ) -> None:
        for outcome in outcomes:
            outcome.__pydantic_serializer__.to_json(outcome)  # as the real sender encodes
            future = self.waiting.pop(outcome.command_id, None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())


async def main() -> None:
    tune_gc()
    replies = Replies()

    async def publish(out: Any) -> None:
        for record in outgoing_records(out, TOPICS):
            record.key.encode()
        await asyncio.sleep(args.publish_ms / 1000)

    processor = CommandProcessor(DelayedStore(), StateCache(1_000_000), time.time_ns)
    pipeline = EnginePipeline(processor, publish, 0.0, replier=replies)  # type: ignore[arg-type]
    consumer = Consumer()
    pending: list[tuple[float, InboundRecord]] = []
    arrived = asyncio.Event()
    offsets = iter(range(10**9))
    latencies: list[tuple[float, float]] = []  # (sent, latency)
    stop = time.perf_counter() + args.warmup + args.seconds

    async def client(n: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            i += 1
            body = _cmd("StartWorkflow", f"c{n}-{i}", workflow_name="bench", input={"n": 1})
            value = json.dumps(body).encode()
            rec = InboundRecord(0, next(offsets), body["execution_id"].encode(), value)
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            replies.waiting[body["command_id"]] = future
            sent = time.perf_counter()
            pending.append((sent, rec))
            arrived.set()
            latencies.append((sent, await future - sent))

    async def engine() -> None:
        while time.perf_counter() < stop:
            if not pending:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), 0.1)
                except TimeoutError:
                    continue
            # The first record waiting reaches the engine `--fetch-ms` after it was sent.
            due = pending[0][0] + args.fetch_ms / 1000 - time.perf_counter()
            if due > 0:
                await asyncio.sleep(due)
            batch = [r for _, r in pending]
            pending.clear()
            await pipeline.submit(consumer, [Position(r) for r in batch], batch)  # type: ignore[arg-type]

    cpu0 = time.process_time()
    await asyncio.gather(engine(), *(client(n) for n in range(args.clients)))
    cpu = time.process_time() - cpu0
    await pipeline.drain()
    begin = stop - args.seconds
    measured = sorted(lat for sent, lat in latencies if sent >= begin)
    n = len(measured)
    print(
        f"{n / args.seconds:.1f} starts/s, p50 {1000 * measured[n // 2]:.2f} ms, "
        f"p99 {1000 * measured[int(n * 0.99)]:.2f} ms, mean {1000 * sum(measured) / n:.2f} ms; "
        f"CPU {1e6 * cpu / len(latencies):.0f} µs per start ({args.repo})"
    )


if __name__ == "__main__":
    asyncio.run(main())
