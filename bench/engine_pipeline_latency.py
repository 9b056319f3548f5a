"""The engine pipeline's command→published latency at a steady load, in process.

    .venv/bin/python bench/engine_pipeline_latency.py [REPO] [--commands 4000] [--batch 30]

The real `CommandProcessor` and `EnginePipeline` on the memory event store, with fixed
delays standing in for the servers (appends 8 ms for first commits + 12 ms for the rest,
publishing 6 ms); a batch of `--batch` commands every 50 ms (FastStream's batch timeout).
Prints p50/p99 from a batch's submit to its outcome's publishing. With no servers in it,
it shows what the pipeline's waits cost, apart from the database's and Kafka's noise.
`REPO` (default: this checkout) lets alternating runs compare two versions of the code.
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
parser.add_argument("--commands", type=int, default=4000)
parser.add_argument("--batch", type=int, default=30)
args = parser.parse_args()
sys.path.insert(0, args.repo)
sys.path.insert(0, str(Path(args.repo) / "bench"))
# This bench's own helpers, whichever checkout it measures.
sys.path.insert(1, str(Path(__file__).resolve().parent))

from engine_cpu import records  # noqa: E402
from pipeline_fakes import Consumer, Position  # noqa: E402

from services.engine.pipeline import EnginePipeline  # noqa: E402
from services.engine.processor import CommandProcessor, StateCache  # noqa: E402

try:
    from services.engine.memory_event_store import MemoryEventStore as Store
except ImportError:  # the code before issue 17
    from services.engine.memory_event_store import (  # type: ignore[attr-defined,no-redef]
        InMemoryEventStore as Store,
    )


class DelayedStore(Store):  # type: ignore[misc,valid-type]
    async def append(self, commits: Sequence[Any]) -> Any:
        await asyncio.sleep(0.012)
        return await super().append(commits)

    async def append_first(self, commits: Sequence[Any]) -> Any:
        await asyncio.sleep(0.008)
        return await super().append_first(commits)


async def main() -> None:
    by_partition = records(args.commands, seed=3)
    longest = max(len(p) for p in by_partition)
    flat = [p[i] for i in range(longest) for p in by_partition if i < len(p)]
    submitted: dict[str, float] = {}
    latencies: list[float] = []
    all_published = asyncio.Event()

    async def publish(out: Any) -> None:
        await asyncio.sleep(0.006)
        now = time.perf_counter()
        latencies.extend(now - submitted[o.command_id] for o in out.outcomes)
        if len(latencies) == len(flat):
            all_published.set()

    processor = CommandProcessor(DelayedStore(), StateCache(1_000_000), time.time_ns)
    pipeline = EnginePipeline(processor, publish, 0.0)
    consumer = Consumer()
    started = time.perf_counter()
    for n, i in enumerate(range(0, len(flat), args.batch)):
        if (wait := started + n * 0.05 - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        batch = flat[i : i + args.batch]
        now = time.perf_counter()
        for r in batch:
            submitted[json.loads(r.value)["command_id"]] = now
        await pipeline.submit(consumer, [Position(r) for r in batch], batch)
    await (pipeline.drain() if hasattr(pipeline, "drain") else pipeline.flush())
    await all_published.wait()
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(
        f"{args.repo}: {len(latencies)} commands, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
