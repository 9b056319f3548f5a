"""Restate (npm `@restatedev/restate-server-linux-x64`, PyPI `restate-sdk`) as a benchmark
peer.

The server binary is installed with npm into .local/cache/restate-server-<version>/ on
first use, and runs as a single node at its shipped defaults: the replicated loglet with
replication 1 on its own log-server, RocksDB with its write-ahead log fsynced
(`log-server.rocksdb-disable-wal-fsync = false`). Telemetry is switched off (no network
here); nothing that bears on durability is changed.

A start is `POST /BenchWorkflow/<id>/run/send` on the ingress: Restate answers
`{"status": "Accepted"}` once the invocation is appended to its log (Bifrost) on the
log-server, so an accepted start survives a crash of the server. Two rows:
"start only" adds `?delay=1h` (the invocation is stored with a durable timer and does not
run during the benchmark: the counterpart of a Temporal start with no worker); "run"
lets the server invoke the Python service (restate_service.py) for each workflow while
the benchmark starts more. A read is `GET /restate/workflow/BenchWorkflow/<id>/output`:
a point read of the invocation's status on the server (200 with the output once done,
470 while it is not).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cpu_meter import CpuMeter
from loadgen import HttpConnection, Result, measure

from peers.procs import process, wait_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "local"))
import infra

VERSION = "1.7.12"
PACKAGE = "@restatedev/restate-server-linux-x64"
BENCH_DIR = Path(__file__).resolve().parents[1]


def server_binary() -> Path:
    """The restate-server binary, installed from npm into the shared cache if missing."""
    prefix = infra.CACHE_DIR / f"restate-server-{VERSION}"
    binary = prefix / "node_modules" / PACKAGE / "bin" / "restate-server"
    if not binary.exists():
        print(f"Restate: npm install {PACKAGE}@{VERSION}...", flush=True)
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                f"{PACKAGE}@{VERSION}",
            ],
            check=True,
        )
    return binary


@contextmanager
def restate_stack(work: Path, with_service: bool) -> Iterator[tuple[int, int, dict[str, int]]]:
    """A Restate server (and, if asked, the Python service registered with it): the
    ingress and admin ports and the pids to meter."""
    ingress, admin, node = infra.free_port(), infra.free_port(), infra.free_port()
    base = work / f"restate-{uuid.uuid4().hex[:6]}"
    env = {
        "RESTATE_DISABLE_TELEMETRY": "true",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{node}",
    }
    cmd = [str(server_binary()), "--no-logo", "--base-dir", str(base), "--listen-mode", "tcp"]
    with ExitStack() as stack:
        log = work / "restate-server.log"
        server = stack.enter_context(process(cmd, log, env))
        wait_port(ingress, server, log)
        wait_port(admin, server, log)
        pids = {"restate-server": server.pid}
        # The service is registered with the server in both rows (Restate needs its
        # handlers' schema); for "start only" it is stopped right after, so that nothing
        # but the server runs.
        service_stack = ExitStack()
        port, service = _service(service_stack, work)
        _register(admin, port)
        if with_service:
            stack.enter_context(service_stack)
            pids["Python service (runs workflows)"] = service.pid
        else:
            service_stack.close()
        yield ingress, admin, pids


def _service(stack: ExitStack, work: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """The Python service under hypercorn on a free port, stopped when `stack` closes."""
    port = infra.free_port()
    log = work / "restate-service.log"
    cmd = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}"]
    service = stack.enter_context(
        process([*cmd, "peers.restate_service:app"], log, {"PYTHONPATH": str(BENCH_DIR)})
    )
    wait_port(port, service, log)
    return port, service


def _register(admin: int, service_port: int) -> None:
    """Registers the service's deployment with the server (its admin API), retrying while
    the server is still provisioning itself."""
    body = json.dumps({"uri": f"http://127.0.0.1:{service_port}"}).encode()
    deadline = time.monotonic() + 60
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{admin}/deployments",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                if reply.status in (200, 201):
                    return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"registering the Restate service failed: {exc}") from exc
        time.sleep(0.5)


async def _drive(
    label: str,
    ingress: int,
    pids: dict[str, int],
    clients: int,
    seconds: float,
    warmup: float,
    delay: bool,
) -> Result:
    conns = [HttpConnection("127.0.0.1", ingress) for _ in range(clients)]
    run = uuid.uuid4().hex[:6]
    counter = iter(range(10**9))
    suffix = "?delay=1h" if delay else ""
    body = json.dumps({"n": 1}).encode()

    async def start(worker: int) -> str:
        workflow_id = f"r-{run}-{next(counter)}"
        status, payload = await conns[worker].request(
            "POST", f"/BenchWorkflow/{workflow_id}/run/send{suffix}", body
        )
        if status != 202 and status != 200:
            raise RuntimeError(f"send answered {status}: {payload[:200]!r}")
        return workflow_id

    async def read(worker: int, workflow_id: str) -> None:
        status, payload = await conns[worker].request(
            "GET", f"/restate/workflow/BenchWorkflow/{workflow_id}/output"
        )
        if status not in (200, 470):
            raise RuntimeError(f"output answered {status}: {payload[:200]!r}")

    # The first sends can wait for the partitions' leaders: not part of the measure.
    for attempt in range(120):
        try:
            await start(0)
            break
        except Exception:
            conns[0].close()
            if attempt == 119:
                raise
            await asyncio.sleep(0.5)
    try:
        cpu = CpuMeter({**pids, "bench client": os.getpid()})
        return await measure(label, clients, seconds, warmup, start, read, cpu)
    finally:
        for conn in conns:
            conn.close()


def bench_restate(
    work: Path, clients: int, seconds: float, warmup: float, run_workflows: bool
) -> Result:
    label = f"Restate {VERSION}, " + ("run" if run_workflows else "start only")
    with restate_stack(work, with_service=run_workflows) as (ingress, admin, pids):
        result = asyncio.run(
            _drive(label, ingress, pids, clients, seconds, warmup, delay=not run_workflows)
        )
        result.note = "invocations by status at the end: " + _statuses(admin)
        return result


def _statuses(admin: int) -> str:
    """How many invocations each status holds (did the "run" row really run them?), from
    the admin API's SQL introspection."""
    body = json.dumps(
        {"query": "SELECT status, count(*) AS n FROM sys_invocation GROUP BY status"}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}/query",
        data=body,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            rows = json.load(reply).get("rows", [])
    except (OSError, ValueError) as exc:
        return f"unknown ({exc})"
    return ", ".join(f"{row['status']} {row['n']}" for row in rows)
