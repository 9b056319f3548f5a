"""A/B of history reads, request by request: two API processes built from two checkouts
(e.g. `git worktree add /tmp/base main` as A, this tree as B) over one scratch database,
and a client alternating A, B, B, A, ... so both see the same load on a shared machine.

    .venv/bin/python bench/history_ab.py --a /tmp/base [--b .] [--mongo-url URL] [--pairs 60]
                                         [--no-blocks]

The database is seeded once by this tree's bulk loader (bench/list_runs.py: the
projector's own fold, so chunks and, where this tree seals them, blocks); a tree whose
reader knows no blocks reads the chunks. Each answer of A must equal B's byte for byte.
Prints p50/p95 per side and A/B ratios. Without --mongo-url (or RUNSTORE_MONGO_URL) it
starts its own FerretDB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from list_runs import load, long_run
from pymongo import AsyncMongoClient
from servers import infra, mongo_server

from services.api.run_reader import history_token
from services.common.readmodels.store import HISTORY

# One API process: the tree's app, no lifespan (no Kafka feeds), on a port.
_SERVE = """
import sys
sys.path.insert(0, sys.argv[1])
import uvicorn
from services.api.app import build_app
from services.common.settings import ApiSettings
settings = ApiSettings(mongo_url=sys.argv[2], mongo_database=sys.argv[3],
                       mongo_read_models_database=sys.argv[3], api_keys=None)
uvicorn.run(build_app(settings), host="127.0.0.1", port=int(sys.argv[4]), lifespan="off",
            log_level="warning")
"""


def _p95(xs: list[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


async def _ready(url: str) -> None:
    async with httpx.AsyncClient() as probe:
        for _ in range(600):
            try:
                await probe.get(f"{url}/healthz")
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


async def _seed(mongo_url: str, database: str, blocks: bool = True, drop: bool = False) -> None:
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        if drop:
            await mongo.drop_database(database)
            return
        await load(mongo[database], long_run("b"))
        if not blocks:  # as a history written before blocks existed
            await mongo[database][HISTORY].delete_many({"_id": {"$regex": ":b[0-9]+$"}})
    finally:
        await mongo.close()


async def _measure(urls: dict[str, str], pairs: int) -> None:
    run = "run-b-long"
    token = history_token(run, 5000)
    reads = {
        "whole 10,000-event run": f"/v1/workflows/runs/{run}/history",
        "whole 10,000, by execution": "/v1/workflows/executions/b-long/history",
        "page of 1000 (5001-6000)": f"/v1/workflows/runs/{run}/history?page_size=1000"
        f"&next_page_token={token}",
        "page of 100 (5001-5100)": f"/v1/workflows/runs/{run}/history?page_size=100"
        f"&next_page_token={token}",
    }
    for url in urls.values():
        await _ready(url)
    sides = list(urls)
    headers = {"Authorization": "Bearer bench"}
    async with httpx.AsyncClient(timeout=120, headers=headers) as http:
        print(
            f"{'read (ms)':<28}"
            + "".join(f"{s + ' p50':>10}{s + ' p95':>10}" for s in sides)
            + f"{'A/B p50':>10}{'A/B p95':>10}"
        )
        for label, path in reads.items():
            answers = {(await http.get(urls[s] + path)).content for s in sides}
            assert len(answers) == 1, f"{label}: A and B answer differently"
            samples: dict[str, list[float]] = {s: [] for s in sides}
            for i in range(pairs):
                for side in sides if i % 2 == 0 else sides[::-1]:
                    began = time.perf_counter()
                    res = await http.get(urls[side] + path)
                    samples[side].append((time.perf_counter() - began) * 1000)
                    assert res.status_code == 200, res.text[:200]
            p50 = {s: statistics.median(x) for s, x in samples.items()}
            p95 = {s: _p95(x) for s, x in samples.items()}
            a, b = sides
            print(
                f"{label:<28}"
                + "".join(f"{p50[s]:>10.1f}{p95[s]:>10.1f}" for s in sides)
                + f"{p50[a] / p50[b]:>9.2f}x{p95[a] / p95[b]:>9.2f}x",
                flush=True,
            )


def ab(trees: dict[str, Path], mongo_url: str, pairs: int, blocks: bool = True) -> None:
    database = f"bench_history_ab_{uuid.uuid4().hex[:8]}"
    asyncio.run(_seed(mongo_url, database, blocks))
    urls = {side: f"http://127.0.0.1:{infra.free_port()}" for side in trees}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(tree), mongo_url, database, url.split(":")[-1]],
            cwd=tree,
            stderr=subprocess.DEVNULL,
        )
        for tree, url in zip(trees.values(), urls.values(), strict=True)
    ]
    try:
        asyncio.run(_measure(urls, pairs))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        asyncio.run(_seed(mongo_url, database, drop=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    parser.add_argument("--b", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--mongo-url", default=os.environ.get("RUNSTORE_MONGO_URL"))
    parser.add_argument("--pairs", type=int, default=60, help="requests per side and read")
    parser.add_argument(
        "--no-blocks",
        action="store_true",
        help="delete the sealed blocks after seeding: B reads a history written before blocks",
    )
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    with tempfile.TemporaryDirectory(prefix="runstore-history-ab-") as tmp, ExitStack() as stack:
        url = args.mongo_url
        if url is None:
            url, _ = stack.enter_context(mongo_server(Path(tmp)))
        ab(trees, url, args.pairs, blocks=not args.no_blocks)


if __name__ == "__main__":
    main()
