"""DBOS (PyPI `dbos`) over PostgreSQL as a benchmark peer.

A start is `DBOSClient.enqueue_async` of the one-step workflow of dbos_app.py on its queue:
one INSERT of the workflow's status row into DBOS's system database, committed. At
PostgreSQL's defaults (synchronous_commit on, fsync on) the commit returns once the WAL
record is flushed to disk, so an enqueued workflow survives a crash of either process.
A read is `retrieve_workflow_async`: one SELECT of that row.

Two rows: "start only" (no DBOS application running: the workflows stay ENQUEUED, like
a Temporal start with no worker) and "run" (the application process dequeues and runs
each workflow while the benchmark enqueues).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "local"))

from cpu_meter import CpuMeter
from loadgen import Result, measure
from postgres import postgres_server

from peers.dbos_app import APP, QUEUE, WORKFLOW
from peers.procs import process

APP_SCRIPT = Path(__file__).resolve().with_name("dbos_app.py")


async def _drive(
    label: str, url: str, pids: dict[str, int], clients: int, seconds: float, warmup: float
) -> Result:
    from dbos import DBOSClient, EnqueueOptions

    # The client is synchronous underneath (`*_async` run it in the loop's executor), so
    # give every benchmark client a thread and a pooled connection.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(clients))
    client = DBOSClient(
        system_database_url=url, system_database_pool_size=clients, application_name=APP
    )
    run = uuid.uuid4().hex[:6]
    counter = iter(range(10**9))

    async def start(worker: int) -> str:
        options: EnqueueOptions = {
            "queue_name": QUEUE,
            "workflow_name": WORKFLOW,
            "workflow_id": f"d-{run}-{next(counter)}",
        }
        handle = await client.enqueue_async(options, {"n": 1})
        return handle.get_workflow_id()

    async def read(worker: int, workflow_id: str) -> None:
        await client.retrieve_workflow_async(workflow_id)

    try:
        cpu = CpuMeter(
            {**pids, "bench client (DBOS library)": os.getpid()},
            alone="bench client (DBOS library)",
        )
        result = await measure(label, clients, seconds, warmup, start, read, cpu)
    finally:
        client.destroy()
    result.note = "workflows by status at the end: " + _statuses(url)
    return result


def _statuses(url: str) -> str:
    """How many workflows each status holds (did the "run" row really run them?)."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM dbos.workflow_status GROUP BY status ORDER BY 1"
        ).fetchall()
    return ", ".join(f"{status} {count}" for status, count in rows)


def bench_dbos(
    work: Path, clients: int, seconds: float, warmup: float, run_workflows: bool
) -> Result:
    label = "DBOS 3.4 + PostgreSQL, " + ("run" if run_workflows else "start only")
    with postgres_server(work, database=f"dbos_{uuid.uuid4().hex[:6]}") as (url, pg_pid):
        migrate = subprocess.run(
            [sys.executable, str(APP_SCRIPT), url, "--migrate-only"],
            capture_output=True,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"DBOS migration failed: {migrate.stderr.decode()[-2000:]}")
        pids = {"postgres": pg_pid}
        if not run_workflows:
            return asyncio.run(_drive(label, url, pids, clients, seconds, warmup))
        log = work / "dbos-app.log"
        with process([sys.executable, str(APP_SCRIPT), url], log) as app:
            deadline = time.monotonic() + 60
            while b"dbos app ready" not in log.read_bytes():
                if app.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the DBOS app did not start; see {log}")
                time.sleep(0.2)
            pids["DBOS app (runs workflows)"] = app.pid
            return asyncio.run(_drive(label, url, pids, clients, seconds, warmup))
