"""Read-path benchmark: list_runs per filter (search keys and workflow tags included),
get_run, get_workflow_execution and run histories — a 1-2 event run, a page of 100 events
of a 10,000-event run (the paging extension, random pages), and that run's whole history —
at 10k and 100k runs (and 1M on a real MongoDB).

    .venv/bin/python bench/list_runs.py [--mongo-url URL] [--sizes 10000,100000] [--no-lists]
                                        [--history-only] [--json out.json]

Without --mongo-url (or RUNSTORE_MONGO_URL) it starts its own FerretDB on a free port
(bench/servers.py), so it needs no running stack.

Seeding is a BULK LOADER, not the real path: run documents, execution pointers, history
chunks and commits are made by the projector's own pure fold (`project`) from synthetic
engine events and inserted straight into a scratch database (dropped at the end). The
requests go through the real FastAPI app in-process (ASGI, no network, no Kafka), so each
figure is the handler + RunReader + the database round trips.

Each measure runs until it has 200 samples or its time budget is spent (at least 5
samples), and prints p50/p95 in milliseconds; the last column is the ratio of p95 to the
same measure at the first (smallest) size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from pymongo import AsyncMongoClient
from servers import mongo_server

from schemas.commits import Commit
from schemas.common import Failure, Payload
from schemas.events import (
    CompletedAttributes,
    Event,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    FailedAttributes,
    SignaledAttributes,
    SignalReceived,
    StartedAttributes,
    event_id_for,
)
from services.api.list_index_feed import load_runs
from services.api.run_reader import history_token
from services.common.commit_log import COMMITS, commit_to_doc
from services.common.readmodels.list_index import RunListIndex
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.readmodels.projection import ReadModelDocs, project
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS
from services.common.settings import ApiSettings

Doc = dict[str, Any]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
SPAN_NS = 30 * 24 * 3600 * 10**9  # start times spread over 30 days
WORKFLOWS = [f"workflow-{i:02d}" for i in range(20)]
USERS = [f"user-{i:02d}" for i in range(50)]
DEPLOYMENTS = ["prod", "staging", "dev", "eu", "us"]
TAGS = ["billing", "nightly", "eu", "beta", "etl"]
# Tags belong to workflows: workflow i has TAGS[i % 5] and, for even i, TAGS[(i + 1) % 5].
WORKFLOW_TAGS = {
    w: sorted({TAGS[i % 5], *([TAGS[(i + 1) % 5]] if i % 2 == 0 else [])})
    for i, w in enumerate(WORKFLOWS)
}
HISTORY_PAGE = 100
LONG_RUN_EVENTS = 10_000
BUDGET_SECONDS = 4.0
MAX_SAMPLES = 200
INSERT_BATCH = 2000


# --- seeding ----------------------------------------------------------------------------------


def envelope(
    execution_id: str, run_id: str, seq: int, n: int, ts: int, root: str, parent: str | None
) -> dict[str, Any]:
    return {
        "event_id": event_id_for(execution_id, seq, 0),
        "execution_id": execution_id,
        "seq": seq,
        "index": 0,
        "event_number": n,
        "run_id": run_id,
        "workflow_name": "",
        "root_execution_id": root,
        "parent_execution_id": parent,
        "timestamp_ns": ts,
        "command_id": f"cmd-{execution_id}-{seq}",
    }


def synthetic_run(rnd: random.Random, i: int, prefix: str) -> list[Event]:
    """The events of one run, with a realistic spread of attributes and outcomes."""
    execution_id = f"{prefix}-{i:07d}"
    run_id = f"run-{prefix}-{i:07d}"
    root, parent = execution_id, None
    if i % 10 in (1, 2, 3) and i >= 10:  # trees: children of the run at i - i % 10
        root = parent = f"{prefix}-{i - i % 10:07d}"
    workflow = rnd.choice(WORKFLOWS)
    start = T0.timestamp() * 10**9 + rnd.randrange(SPAN_NS)
    start_ns = int(start)
    env = envelope(execution_id, run_id, 1, 1, start_ns, root, parent)
    env["workflow_name"] = workflow
    events: list[Event] = [
        ExecutionStarted(
            **env,
            attributes=StartedAttributes(
                task_id=f"{run_id}:1",
                workflow_name=workflow,
                input=Payload(value={"i": i}),
                display_name=f"Nightly {workflow} #{i}" if i % 4 == 0 else None,
                deployment_name=rnd.choice(DEPLOYMENTS),
                user_id=rnd.choice(USERS),
                internal=rnd.random() < 0.05,
                # Most runs name their customer (~1,000 of them); some an order too.
                search_keys=(
                    {
                        "customer": f"Customer {i % 997:03d}",
                        **({"order": f"O-{i}"} if i % 3 == 0 else {}),
                    }
                    if i % 10 < 8
                    else None
                ),
                workflow_tags=WORKFLOW_TAGS[workflow],
            ),
        )
    ]
    outcome = rnd.random()
    if outcome < 0.10:
        return events  # RUNNING
    end = envelope(execution_id, run_id, 2, 2, start_ns + rnd.randrange(10**12), root, parent)
    end["workflow_name"] = workflow
    if outcome < 0.85:
        events.append(
            ExecutionCompleted(
                **end,
                attributes=CompletedAttributes(task_id=f"{run_id}:2", result=Payload(value=i)),
            )
        )
    else:
        events.append(
            ExecutionFailed(
                **end,
                attributes=FailedAttributes(task_id=f"{run_id}:2", failure=Failure(message="boom")),
            )
        )
    return events


def long_run(prefix: str) -> list[Event]:
    execution_id, run_id = f"{prefix}-long", f"run-{prefix}-long"
    start_ns = int(T0.timestamp() * 10**9)
    env = envelope(execution_id, run_id, 1, 1, start_ns, execution_id, None)
    env["workflow_name"] = "long"
    events: list[Event] = [
        ExecutionStarted(
            **env,
            attributes=StartedAttributes(task_id="t", workflow_name="long", input=Payload(value=1)),
        )
    ]
    for n in range(2, LONG_RUN_EVENTS + 1):
        env = envelope(execution_id, run_id, n, n, start_ns + n * 10**6, execution_id, None)
        env["workflow_name"] = "long"
        events.append(
            SignalReceived(
                **env,
                attributes=SignaledAttributes(signal_name="tick", input=Payload(value={"n": n})),
            )
        )
    return events


def commits_of(events: list[Event]) -> list[Doc]:
    return [
        commit_to_doc(
            Commit(
                execution_id=e.execution_id,
                seq=e.seq,
                command_id=e.command_id,
                command_type="bench",
                run_id=e.run_id,
                events=[e],
                committed_at=T0,
                state={},
            )
        )
        for e in events
    ]


async def insert(db: Any, name: str, docs: list[Doc]) -> None:
    for k in range(0, len(docs), INSERT_BATCH):
        await db[name].insert_many(docs[k : k + INSERT_BATCH], ordered=False)


async def load(db: Any, events: list[Event]) -> None:
    """Bulk loader: the projector's fold, written with plain inserts."""
    history, runs, pointers = project(events, ReadModelDocs()).changes()
    await insert(db, HISTORY, list(history.values()))
    await insert(db, RUNS, list(runs.values()))
    await insert(db, EXECUTIONS, list(pointers.values()))
    await insert(db, COMMITS, commits_of(events))


async def seed(db: Any, rnd: random.Random, start: int, stop: int, prefix: str) -> None:
    began = time.monotonic()
    step = 5000
    for k in range(start, stop, step):
        events = [e for i in range(k, min(k + step, stop)) for e in synthetic_run(rnd, i, prefix)]
        await load(db, events)
        print(f"\r  bulk-loaded {min(k + step, stop):,} runs", end="", file=sys.stderr, flush=True)
    print(f" ({time.monotonic() - began:.0f}s)", file=sys.stderr)


# --- measuring --------------------------------------------------------------------------------


class ListTimeout(Exception):
    """The API answered 503 `list_timeout`: the store's query outlived the list deadline."""


TIMED_OUT = (math.inf, math.inf, 0)
"""A measure whose requests hit the API's list deadline (RUNSTORE_API_LIST_TIMEOUT_SECONDS,
10 s by default)."""


def cell(ms: float) -> str:
    return "timeout" if math.isinf(ms) else f"{ms:.1f}"


async def measure(
    call: Callable[[int], Awaitable[None]], least: int = 5, warm_up: bool = True
) -> tuple[float, float, int]:
    samples: list[float] = []
    if warm_up:
        await call(0)
    began = time.monotonic()
    while len(samples) < MAX_SAMPLES and (
        len(samples) < least or time.monotonic() - began < BUDGET_SECONDS
    ):
        t = time.perf_counter()
        await call(len(samples))
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return statistics.median(samples), p95, len(samples)


def list_filters(prefix: str) -> dict[str, dict[str, Any]]:
    mid = T0 + timedelta(days=15)
    return {
        "list: no filter": {},
        "list: workflow_identifier": {"workflow_identifier": "workflow-07"},
        "list: status=FAILED": {"status": "FAILED"},
        "list: status in (RUNNING,FAILED)": {"status": ["RUNNING", "FAILED"]},
        "list: user_id": {"user_id": "user-13"},
        "list: deployment_name": {"deployment_name": "eu"},
        "list: root_execution_id": {"root_execution_id": f"{prefix}-0000010"},
        "list: search (display name)": {"search": "NIGHTLY workflow-03 #1"},
        "list: include_internal=false": {"include_internal": "false"},
        "list: start_time range": {
            "start_time_after": mid.isoformat(),
            "start_time_before": (mid + timedelta(days=1)).isoformat(),
        },
        "list: end_time_after": {"end_time_after": mid.isoformat()},
        "list: sort end_time asc": {"sort_by": "end_time", "order": "asc"},
        "list: workflow + status": {"workflow_identifier": "workflow-07", "status": "FAILED"},
        "list: search_key exact": {"search_key": "customer==:Customer 123"},
        "list: search_key similar": {"search_key": "customer:tomer 12"},
        "list: search_key set (key)": {"search_key": "order"},
        "list: workflow_tags (2)": {"workflow_tags": ["billing", "nightly"]},
    }


# Lists that full-scan (FerretDB) take seconds each at 100k runs: at such sizes only these
# are measured, with few samples, to keep the whole run near ten minutes.
SCAN_SUBSET = (
    "list: no filter",
    "list: workflow_identifier",
    "list: status=FAILED",
    "list: search (display name)",
    "list: sort end_time asc",
    "list: search_key exact",
    "list: workflow_tags (2)",
)
SCAN_HEAVY_FROM = 50_000


async def run_measures(
    http: httpx.AsyncClient,
    prefix: str,
    size: int,
    rnd: random.Random,
    scans: bool,
    lists: bool = True,
    point_reads: bool = True,
    suffix: str = "",
) -> dict[str, tuple[float, float, int]]:
    """The measures at one size; list measures are named with `suffix` appended."""
    out: dict[str, tuple[float, float, int]] = {}
    headers = {"Authorization": "Bearer bench"}

    async def get(path: str, **params: Any) -> httpx.Response:
        res = await http.get(
            path,
            params={"page_size": 50, **params} if path.endswith("/runs") else params,
            headers=headers,
        )
        if res.status_code == 503 and "list_timeout" in res.text:
            raise ListTimeout(res.text[:200])
        if res.status_code != 200:
            raise RuntimeError(f"{path} {params}: {res.status_code} {res.text[:200]}")
        return res

    async def timed(call: Callable[[int], Awaitable[None]]) -> tuple[float, float, int]:
        # A store-path list that the API cuts off at its list deadline is a result (the
        # store cannot answer it in time), not a failure of the bench.
        try:
            return await measure(call, least=1 if heavy else 3, warm_up=not scans)
        except ListTimeout:
            return TIMED_OUT

    heavy = scans and size >= SCAN_HEAVY_FROM
    for name, params in list_filters(prefix).items() if lists else ():
        if heavy and name not in SCAN_SUBSET:
            continue

        async def one(_: int, params: dict[str, Any] = params) -> None:
            await get("/v1/workflows/runs", **params)

        out[name + suffix] = await timed(one)
        print(f"  {name + suffix}: p95 {cell(out[name + suffix][1])} ms", file=sys.stderr)

    if lists and out["list: no filter" + suffix] is not TIMED_OUT:
        first = (await get("/v1/workflows/runs")).json()["next_page_token"]

        async def second_page(_: int) -> None:
            await get("/v1/workflows/runs", next_page_token=first)

        out["list: second page (token)" + suffix] = await timed(second_page)
    elif lists:
        out["list: second page (token)" + suffix] = TIMED_OUT
    if not point_reads:
        return out

    def some_run() -> int:
        return rnd.randrange(size)

    async def running_runs() -> list[str]:
        try:
            page = (await get("/v1/workflows/runs", status="RUNNING", page_size=200)).json()
            return [r["run_id"] for r in page["executions"] if r["workflow_name"] != "long"]
        except ListTimeout:
            # The store cannot list them in time: find some by point reads (~10 % of the
            # seeded runs are RUNNING).
            found: list[str] = []
            for i in rnd.sample(range(size), min(size, 2000)):
                run = (await get(f"/v1/workflows/runs/run-{prefix}-{i:07d}")).json()
                if run["status"] == "RUNNING" and run["workflow_name"] != "long":
                    found.append(run["run_id"])
                    if len(found) == 50:
                        break
            return found

    running = await running_runs()

    async def get_run(_: int) -> None:
        await get(f"/v1/workflows/runs/run-{prefix}-{some_run():07d}")

    async def get_running_run(n: int) -> None:
        await get(f"/v1/workflows/runs/{running[n % len(running)]}")

    async def get_execution(_: int) -> None:
        await get(f"/v1/workflows/executions/{prefix}-{some_run():07d}")

    async def short_history(_: int) -> None:
        await get(f"/v1/workflows/runs/run-{prefix}-{some_run():07d}/history")

    async def missing_run(_: int) -> None:
        res = await http.get(f"/v1/workflows/runs/no-such-run-{_}", headers=headers)
        assert res.status_code == 404

    out["get_run (any run)"] = await measure(get_run)
    out["get_run (RUNNING run)"] = await measure(get_running_run)
    out["get_workflow_execution"] = await measure(get_execution)
    out["history: 1-2 event run (1 chunk)"] = await measure(short_history)
    out.update(await long_history_measures(get, prefix, rnd, least=2 if heavy else 5))
    # A 404 is two `_id` misses (the run, its locator).
    out["get_run: unknown id (404)"] = await measure(missing_run)
    return out


async def long_history_measures(
    get: Callable[..., Awaitable[httpx.Response]], prefix: str, rnd: random.Random, least: int
) -> dict[str, tuple[float, float, int]]:
    """The 10,000-event run's history: random pages of 100 (chunks) and of 1,000 (one
    sealed block each), the first page by execution, and the whole history (10 sealed
    blocks where the code seals blocks, else 100 chunks) by run and by execution."""
    out: dict[str, tuple[float, float, int]] = {}
    long_run_id = f"run-{prefix}-long"

    # The whole history is timed up to its 4.2 MB body; the body is parsed once (in the
    # warm-up), then only its events counted: the client's JSON parse (30-70 ms here) is
    # the client's cost, not the server's.
    parsed: set[str] = set()

    async def whole(path: str, n: int) -> None:
        res = await get(path)
        if path not in parsed:
            parsed.add(path)
            assert len(res.json()["events"]) == LONG_RUN_EVENTS
        assert res.content.count(b'"event_number":') == LONG_RUN_EVENTS

    async def long_history(n: int) -> None:
        await whole(f"/v1/workflows/runs/{long_run_id}/history", n)

    async def long_execution_history(n: int) -> None:
        await whole(f"/v1/workflows/executions/{prefix}-long/history", n)

    def history_page(size: int) -> Callable[[int], Awaitable[None]]:
        async def one(_: int) -> None:
            after = rnd.randrange(LONG_RUN_EVENTS // size) * size
            params: dict[str, Any] = {"page_size": size}
            if after:
                params["next_page_token"] = history_token(long_run_id, after)
            body = (await get(f"/v1/workflows/runs/{long_run_id}/history", **params)).json()
            assert body["events"][0]["event_number"] == after + 1
            assert len(body["events"]) == size

        return one

    async def execution_history_page(_: int) -> None:
        body = (
            await get(f"/v1/workflows/executions/{prefix}-long/history", page_size=HISTORY_PAGE)
        ).json()
        assert len(body["events"]) == HISTORY_PAGE

    k = LONG_RUN_EVENTS // 1000
    out[f"history: page of {HISTORY_PAGE} ({k}k-ev run)"] = await measure(
        history_page(HISTORY_PAGE)
    )
    out[f"history: page of 1000 ({k}k-ev run)"] = await measure(history_page(1000))
    out["history: 1st page, by execution"] = await measure(execution_history_page)
    out[f"history: whole {LONG_RUN_EVENTS:,}-event run"] = await measure(long_history, least)
    out[f"history: whole {LONG_RUN_EVENTS:,}, by execution"] = await measure(
        long_execution_history, least
    )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mongo-url",
        default=os.environ.get("RUNSTORE_MONGO_URL"),
        help="a MongoDB-protocol server (default: start a local FerretDB for this run)",
    )
    parser.add_argument("--sizes", default=None, help="comma-separated run counts")
    parser.add_argument(
        "--no-lists",
        action="store_true",
        help="point reads and histories only (lists are full scans on FerretDB: minutes)",
    )
    parser.add_argument(
        "--list-path",
        default="store,index",
        help="where lists are answered, comma-separated and measured in this order: 'store' "
        "(queries of the store), 'index' (the API's in-memory run list index, loaded from "
        "the store at each size; its list measures are marked [index])",
    )
    parser.add_argument(
        "--history-only",
        action="store_true",
        help="seed only the 10,000-event run and measure its history reads (seconds, not "
        "minutes: for A/B runs of the history path)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--label", help="the server's name in the table (default: detected)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runstore-list-runs-") as tmp, ExitStack() as stack:
        if args.mongo_url is None:
            os.environ.pop("RUNSTORE_MONGO_URL", None)
            args.mongo_url, _ = stack.enter_context(mongo_server(Path(tmp)))
        await bench(args)


async def bench(args: argparse.Namespace) -> None:
    mongo: AsyncMongoClient[Doc] = AsyncMongoClient(args.mongo_url, tz_aware=True)
    info = await mongo.admin.command("buildInfo")
    ferret = "ferretdbVersion" in info
    server = args.label or ("FerretDB (SQLite)" if ferret else f"MongoDB {info.get('version')}")
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000, 100_000] if ferret else [10_000, 100_000, 1_000_000])
    )
    database = f"bench_list_runs_{uuid.uuid4().hex[:8]}"
    db = mongo[database]
    prefix = "b"
    rnd = random.Random(42)
    print(f"server: {server} at {args.mongo_url}; scratch database {database}", file=sys.stderr)
    print(
        "seeding: BULK LOADER straight into the read models (the projector's fold, "
        "plain inserts), not the engine/projector path",
        file=sys.stderr,
    )

    from services.api.app import build_app

    # The bench loads the read models itself, into the one database it drops at the end.
    settings = ApiSettings(
        mongo_url=args.mongo_url,
        mongo_database=database,
        mongo_read_models_database=database,
        api_keys=None,
    )
    app = build_app(settings)
    # The ASGI transport runs no lifespan, so the index feed never starts: the bench loads
    # the index from the store itself (as the feed's bootstrap does) and switches lists
    # between the store and the index with `ready`.
    index: RunListIndex = app.state.list_index
    # Callers that build their own namespace (bench/local_store.py) compare stores only.
    paths = [p.strip() for p in getattr(args, "list_path", "store").split(",") if p.strip()]
    results: dict[int, dict[str, tuple[float, float, int]]] = {}
    index_stats: dict[int, tuple[float, float]] = {}
    try:
        await MongoReadModelStore(db).setup()
        await load(db, long_run(prefix))
        if getattr(args, "history_only", False):
            await history_only(app, prefix, rnd, server)
            return
        seeded = 0
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            for size in sizes:
                print(f"{size:,} runs:", file=sys.stderr)
                await seed(db, rnd, seeded, size, prefix)
                seeded = size
                results[size] = {}
                for n, path in enumerate(paths):
                    index.ready = False
                    if path == "index":
                        index_stats[size] = await load_index(db, index)
                        index.ready = True
                    results[size].update(
                        await run_measures(
                            http,
                            prefix,
                            size,
                            rnd,
                            ferret and path == "store",
                            lists=not args.no_lists,
                            point_reads=n == 0,
                            suffix=" [index]" if path == "index" else "",
                        )
                    )
                index.clear()
    finally:
        await mongo.drop_database(database)
        await mongo.close()

    print_table(server, sizes, results)
    for size, (seconds, grown) in index_stats.items():
        print(
            f"index at {size:,} runs: loaded from the store in {seconds:.1f} s; "
            f"process RSS grew {grown:.0f} MB while loading it"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "server": server,
                    "sizes": sizes,
                    "index": {
                        str(size): {"load_seconds": sec, "rss_growth_mb": mb}
                        for size, (sec, mb) in index_stats.items()
                    },
                    "results": {
                        str(size): {
                            name: {"p50_ms": p50, "p95_ms": p95, "samples": n}
                            for name, (p50, p95, n) in measures.items()
                        }
                        for size, measures in results.items()
                    },
                },
                indent=1,
            )
        )


async def history_only(app: Any, prefix: str, rnd: random.Random, server: str) -> None:
    """`--history-only`: the long run's history measures, printed as a table."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:

        async def get(path: str, **params: Any) -> httpx.Response:
            res = await http.get(path, params=params, headers={"Authorization": "Bearer bench"})
            if res.status_code != 200:
                raise RuntimeError(f"{path} {params}: {res.status_code} {res.text[:200]}")
            return res

        results = await long_history_measures(get, prefix, rnd, least=20)
    print(f"\nhistory reads on {server} (the {LONG_RUN_EVENTS:,}-event run; bulk loader)")
    print(f"{'measure (ms)':<44}{'p50':>10}{'p95':>10}{'samples':>10}")
    for name, (p50, p95, n) in results.items():
        print(f"{name:<44}{p50:>10.1f}{p95:>10.1f}{n:>10}")


def rss_mb() -> float:
    """This process's resident set size (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load_index(db: Any, index: RunListIndex) -> tuple[float, float]:
    """Load the run list index from the store (the feed's bootstrap scan): (seconds, RSS
    growth in MB)."""
    index.clear()
    gc.collect()
    before, began = rss_mb(), time.monotonic()
    count = await load_runs(db, index)
    seconds = time.monotonic() - began
    gc.collect()
    grown = rss_mb() - before
    print(
        f"  index: {count:,} runs loaded in {seconds:.1f} s, RSS +{grown:.0f} MB", file=sys.stderr
    )
    return seconds, grown


def print_table(
    server: str, sizes: list[int], results: dict[int, dict[str, tuple[float, float, int]]]
) -> None:
    base = sizes[0]
    names = list(results[base])
    head = f"{'measure (ms)':<44}" + "".join(f"{f'{s:,} p50':>12}{f'{s:,} p95':>12}" for s in sizes)
    if len(sizes) > 1:
        head += "".join(f"{f'p95 {s // base}x/1x':>12}" for s in sizes[1:])
    print(f"\nlist_runs benchmark on {server} (page_size 50; seeded by bulk loader)")
    print(head)
    print("-" * len(head))
    for name in names:
        row = f"{name:<44}"
        for s in sizes:
            if name in results[s]:
                p50, p95, _ = results[s][name]
                row += f"{cell(p50):>12}{cell(p95):>12}"
            else:
                row += f"{'-':>12}{'-':>12}"
        for s in sizes[1:]:
            if name in results[s] and not math.isinf(results[s][name][1] + results[base][name][1]):
                row += f"{results[s][name][1] / max(results[base][name][1], 1e-6):>12.2f}"
            else:
                row += f"{'-':>12}"
        print(row)
    print(
        "samples per measure: lists 3 (1 at >= 50k runs) on FerretDB (each a full scan), "
        "else >= 5 within 4 s; timeout: the API cut the store's list query off at its list "
        "deadline (503 list_timeout)"
    )


if __name__ == "__main__":
    asyncio.run(main())
