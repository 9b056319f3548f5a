"""Does a point read's store round trip wait for a write in flight? FerretDB (SQLite) on a
free port: the latency of `commits.get` by `_id` (what a read right after a start sends),
idle and while another client inserts commit-sized documents in a loop (one insert at a
time, as the engine stores a batch).

    .venv/bin/python bench/api_read_while_writing.py [--seconds 5] [--batch 8]

Prints p50/p90/p99 of the read in both phases, and the inserts per second of the second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import mongo_server


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _reads(coll: Any, ids: list[str], until: float) -> list[float]:
    took: list[float] = []
    i = 0
    while time.perf_counter() < until:
        began = time.perf_counter()
        await coll.find_one({"_id": ids[i % len(ids)]})
        took.append((time.perf_counter() - began) * 1000)
        i += 1
        await asyncio.sleep(0.002)
    return took


async def _writes(coll: Any, batch: int, until: float) -> int:
    n = 0
    while time.perf_counter() < until:
        docs = [{"_id": f"w-{n}-{k}", "events": [{"x": "y" * 400}]} for k in range(batch)]
        await coll.insert_many(docs, ordered=True)
        n += 1
    return n


async def run(url: str, seconds: float, batch: int) -> None:
    client: AsyncMongoClient[Any] = AsyncMongoClient(url)
    writer: AsyncMongoClient[Any] = AsyncMongoClient(url)
    coll = client["bench"]["commits"]
    ids = [f"c-{i}" for i in range(200)]
    await coll.insert_many([{"_id": i, "events": [{"x": "y" * 400}]} for i in ids])
    idle = await _reads(coll, ids, time.perf_counter() + seconds)
    until = time.perf_counter() + seconds
    busy, inserts = await asyncio.gather(
        _reads(coll, ids, until), _writes(writer["bench"]["commits"], batch, until)
    )
    for name, took in (("idle", idle), ("while inserting", busy)):
        print(
            f"read by _id, {name:>15}: n={len(took)} p50 {statistics.median(took):.2f} ms, "
            f"p90 {_pct(took, 0.9):.2f}, p99 {_pct(took, 0.99):.2f}"
        )
    print(f"inserts of {batch} documents: {inserts / seconds:.0f}/s")
    await client.close()
    await writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="runstore-read-write-") as tmp,
        mongo_server(Path(tmp)) as (url, _),
    ):
        asyncio.run(run(url, args.seconds, args.batch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
