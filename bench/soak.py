#!/usr/bin/env python3
"""Soak: a steady command load with readers for N minutes; memory of every process.

    .venv/bin/python bench/soak.py                     # 30 min at 300 commands/s
    .venv/bin/python bench/soak.py --minutes 5 --rate 100 --markdown docs/soak-run.md

The load goes to Kafka (`workflows.commands`), one third each StartWorkflow (with a
pre-assigned run id), SignalExecution and CompleteExecution: every execution is started,
signalled a tick later and completed a tick after that. Readers use the HTTP API meanwhile:
point reads (`GET /v1/workflows/executions/{id}` of a recent execution) and list pages
(`GET /v1/workflows/runs`, first page and the one after it); `--run-readers` read runs by
id (`GET /v1/workflows/runs/{run_id}` of a recent run); `--store-readers` more read an
execution's pointer straight from the store (`find_one({_id})`, no API), which splits a
point read's time between the store and the API. Every `--sample-every`
seconds the resident memory (VmRSS) of the engine, projector, API, Kafka and FerretDB is
recorded. At the end: a table of RSS at start, every 10 minutes and at the end, the CPU
each process used over the run, and p50/p99 of the reads per 10-minute window; then the
same reads as the API timed them (its request-latency histogram, so without the client's
side of each hop) and how many point reads the API answered from its run list index. Not part
of `make test`: it takes the box.

Kafka and FerretDB are the ones RUNSTORE_KAFKA_BOOTSTRAP / RUNSTORE_MONGO_URL name, or
started here on free ports (bench/servers.py); the services always start here, with the
settings of this environment (so `RUNSTORE_ENGINE_CACHE_SIZE=…` etc. reach them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cpu_meter import CpuMeter  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from servers import bench_servers  # noqa: E402

from services.common.readmodels.store import EXECUTIONS  # noqa: E402
from tests.support.kafka import command  # noqa: E402
from tests.support.servers import free_port  # noqa: E402
from tests.support.stack import Stack, read_models_name  # noqa: E402

SERVICES = ("engine", "projector", "api")
EXECUTION_ROUTE = "/v1/workflows/executions/{}"
RUN_ROUTE = "/v1/workflows/runs/{}"
TICKS_PER_SECOND = 10


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Soak:
    bootstrap: str
    topic: str
    api_url: str
    rate: int
    seconds: float
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=5000))
    recent_runs: deque[str] = field(default_factory=lambda: deque(maxlen=5000))
    # (elapsed seconds, latency seconds, status) per read kind
    reads: dict[str, list[tuple[float, float, int]]] = field(
        default_factory=lambda: {"point": [], "run": [], "list": [], "store": []}
    )
    samples: list[tuple[float, dict[str, float | None]]] = field(default_factory=list)
    lags: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def done(self) -> bool:
        return self.elapsed() >= self.seconds

    async def load(self) -> None:
        """`rate` commands/s in ticks: starts of new executions, signals to the previous
        tick's, completes of the one before."""
        per_tick = max(1, self.rate // 3 // TICKS_PER_SECOND)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            previous: list[tuple[str, str]] = []
            before: list[tuple[str, str]] = []
            tick = 0
            while not self.done():
                batch = [
                    (f"soak-{uuid.uuid4().hex[:16]}", uuid.uuid4().hex) for _ in range(per_tick)
                ]
                cmds = [
                    command("StartWorkflow", e, workflow_name="soak", input={"n": tick}, run_id=r)
                    for e, r in batch
                ]
                cmds += [
                    command("SignalExecution", e, name="go", input={"t": tick}) for e, _ in previous
                ]
                cmds += [
                    command("CompleteExecution", e, run_id=r, result={"ok": True})
                    for e, r in before
                ]
                for c in cmds:
                    await producer.send(
                        self.topic, json.dumps(c).encode(), key=str(c["execution_id"]).encode()
                    )
                self.sent += len(cmds)
                self.recent.extend(e for e, _ in before)  # read once completed
                self.recent_runs.extend(r for _, r in before)
                before, previous = previous, batch
                tick += 1
                # Keep the schedule: sleep until this tick's slot, never drift.
                await asyncio.sleep(
                    max(0.0, self.started + tick / TICKS_PER_SECOND - time.monotonic())
                )
            await producer.flush()
        finally:
            await producer.stop()

    async def point_reader(
        self, client: httpx.AsyncClient, pause: float, kind: str, ids: deque[str], route: str
    ) -> None:
        """Reads `route` (`{}` = a random id of `ids`, recent ones) in a loop."""
        while not self.done():
            if not ids:
                await asyncio.sleep(0.5)
                continue
            await self._timed(kind, client, route.format(random.choice(ids)))
            await asyncio.sleep(pause)

    async def list_reader(self, client: httpx.AsyncClient, pause: float) -> None:
        while not self.done():
            reply = await self._timed("list", client, "/v1/workflows/runs?page_size=50")
            token = (
                reply.json().get("next_page_token") if reply and reply.status_code == 200 else None
            )
            if token:
                await self._timed(
                    "list",
                    client,
                    "/v1/workflows/runs",
                    {"page_size": 50, "next_page_token": token},
                )
            await asyncio.sleep(pause)

    async def store_reader(self, client: AsyncMongoClient[dict[str, object]], db: str) -> None:
        """`_id` reads of recent executions' pointers, straight from the store."""
        coll = client[db][EXECUTIONS]
        while not self.done():
            if not self.recent:
                await asyncio.sleep(0.5)
                continue
            at = time.monotonic()
            found = await coll.find_one({"_id": random.choice(self.recent)})
            status = 200 if found is not None else 404
            self.reads["store"].append((self.elapsed(), time.monotonic() - at, status))
            await asyncio.sleep(0.05)

    async def _timed(
        self,
        kind: str,
        client: httpx.AsyncClient,
        path: str,
        params: dict[str, object] | None = None,
    ) -> httpx.Response | None:
        at = time.monotonic()
        try:
            reply = await client.get(path, params=params)  # type: ignore[arg-type]
        except httpx.HTTPError:
            self.reads[kind].append((self.elapsed(), time.monotonic() - at, 0))
            return None
        self.reads[kind].append((self.elapsed(), time.monotonic() - at, reply.status_code))
        return reply

    async def sampler(self, pids: dict[str, int], every: float, prefix: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        ends = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await admin.start()
        await ends.start()
        try:
            await self._sample(pids, every, prefix, admin, ends)
        finally:
            await ends.stop()
            await admin.close()

    async def _sample(
        self,
        pids: dict[str, int],
        every: float,
        prefix: str,
        admin: AIOKafkaAdminClient,
        ends: AIOKafkaConsumer,
    ) -> None:
        groups = {"engine": f"{prefix}engine", "projector": f"{prefix}projector"}
        while True:
            sample = {name: rss_mb(pid) for name, pid in pids.items()}
            self.samples.append((self.elapsed(), sample))
            lags = {name: await group_lag(admin, ends, g) for name, g in groups.items()}
            self.lags.append((self.elapsed(), lags))
            line = "  ".join(
                f"{n} {v:.0f}" if v is not None else f"{n} gone" for n, v in sample.items()
            )
            lag = "  ".join(f"{n} {v:,}" for n, v in lags.items())
            print(
                f"[soak] {self.elapsed() / 60:5.1f} min  sent {self.sent:,}  RSS MB: {line}"
                f"  lag: {lag}",
                flush=True,
            )
            if self.done():
                return
            await asyncio.sleep(min(every, max(0.0, self.seconds - self.elapsed())) or every)


async def group_lag(admin: AIOKafkaAdminClient, ends: AIOKafkaConsumer, group: str) -> int:
    """Records a consumer group has yet to commit, over all its partitions."""
    committed = await admin.list_consumer_group_offsets(group)
    if not committed:
        return 0
    latest = await ends.end_offsets(list(committed))
    return sum(max(0, latest[tp] - meta.offset) for tp, meta in committed.items())


def point_read_paths(metrics: str) -> str:
    """How many point reads the API started from its run list index and from the store
    (`runstore_api_point_reads_total`)."""
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("runstore_api_point_reads_total{"):
            path = line.split('path="', 1)[1].split('"', 1)[0]
            counts[path] = float(line.rsplit(" ", 1)[1])
    return ", ".join(f"{k} {v:,.0f}" for k, v in sorted(counts.items())) or "not counted"


API_ROUTES = {
    "point": "/v1/workflows/executions/{execution_id}",
    "run": "/v1/workflows/runs/{run_id}",
    "list": "/v1/workflows/runs",
}
LABEL = re.compile(r'(\w+)="([^"]*)"')


def api_side_table(metrics: str) -> str:
    """The same reads as the API timed them (`runstore_http_request_duration_seconds`, GET,
    200): without the client's side of each hop. Percentiles are the upper bound of the
    histogram bucket they fall in."""
    buckets: dict[str, dict[float, float]] = {}
    for line in metrics.splitlines():
        if not line.startswith("runstore_http_request_duration_seconds_bucket{"):
            continue
        labels = dict(LABEL.findall(line.rsplit("}", 1)[0]))
        if labels.get("method") != "GET" or labels.get("status") != "200":
            continue
        kind = next((k for k, r in API_ROUTES.items() if r == labels.get("route")), None)
        if kind is not None:
            buckets.setdefault(kind, {})[float(labels["le"])] = float(line.rsplit(" ", 1)[1])
    out = [
        "| reads, in the API | n | ≤ 50 ms | p50 ≤ ms | p99 ≤ ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, cumulative in buckets.items():
        ordered = sorted(cumulative.items())
        total = ordered[-1][1]
        if not total:
            continue

        def bound(q: float, ordered: list[tuple[float, float]] = ordered, n: float = total) -> str:
            le = next(le for le, c in ordered if c >= q * n)
            return "inf" if le == float("inf") else f"{le * 1000:g}"

        under = cumulative.get(0.05, 0.0) / total
        out.append(f"| {kind} | {total:,.0f} | {under:.1%} | {bound(0.5)} | {bound(0.99)} |")
    return "\n".join(out)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(soak: Soak, args: argparse.Namespace, cpu: dict[str, float]) -> str:
    names = list(soak.samples[0][1]) if soak.samples else []
    marks = sorted({0.0, *range(600, int(soak.seconds) + 1, 600), soak.seconds})

    def nearest(at: float) -> tuple[float, dict[str, float | None]]:
        return min(soak.samples, key=lambda s: abs(s[0] - at))

    out = [
        f"{args.minutes:g} min at {args.rate} commands/s ({soak.sent:,} sent), "
        f"{args.point_readers} point readers, {args.run_readers} run readers, "
        f"{args.list_readers} list reader(s), "
        f"{args.store_readers} store reader(s)",
        "",
        "| RSS (MB) | " + " | ".join(f"{nearest(m)[0] / 60:.1f} min" for m in marks) + " |",
        "|---|" + "---:|" * len(marks),
    ]
    for name in names:
        cells = []
        for m in marks:
            v = nearest(m)[1].get(name)
            cells.append("gone" if v is None else f"{v:.0f}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in ("engine", "projector"):
        lag_cells = [f"{min(soak.lags, key=lambda s: abs(s[0] - m))[1][name]:,}" for m in marks]
        out.append(f"| {name} lag (records) | " + " | ".join(lag_cells) + " |")
    out += [
        "",
        "| CPU over the run | " + " | ".join(cpu) + " |",
        "|---|" + "---:|" * len(cpu),
        "| cores (CPU s / wall s) | "
        + " | ".join(f"{v / soak.seconds:.2f}" for v in cpu.values())
        + " |",
        "",
        "| reads | window | n | 404 | other errors | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    windows = list(pairwise(marks))
    if len(windows) > 1:
        windows.append((0.0, soak.seconds))
    for kind, rows in soak.reads.items():
        if not rows:
            continue
        for a, b in windows:
            sel = [r for r in rows if a <= r[0] < b or (b == soak.seconds and r[0] >= b)]
            ok = [lat * 1000 for _, lat, status in sel if status == 200]
            missing = sum(1 for r in sel if r[2] == 404)
            label = "all" if (a, b) == (0.0, soak.seconds) else f"{a / 60:.0f}-{b / 60:.0f} min"
            out.append(
                f"| {kind} | {label} | {len(sel)} | {missing} | {len(sel) - len(ok) - missing} | "
                f"{percentile(ok, 0.5):.0f} | {percentile(ok, 0.99):.0f} |"
            )
    out += ["", f"goals under {args.rate} commands/s of writes (whole run):"]
    for kind, what, bound in (
        ("point", "point reads (get execution)", 50),
        ("run", "point reads (get run)", 50),
        ("list", "list pages", 500),
    ):
        reads = soak.reads.get(kind, [])
        ok = [lat * 1000 for _, lat, status in reads if status == 200]
        # A read that failed (not a 404 of a run not yet projected) has no latency to count:
        # any such read fails the goal.
        failed = sum(1 for read in reads if read[2] not in (200, 404))
        if ok:
            p99 = percentile(ok, 0.99)
            verdict = "met" if p99 <= bound and not failed else "not met"
            out.append(
                f"  {what} p99 <= {bound} ms: {p99:.0f} ms ({verdict}; n={len(ok)}, "
                f"{failed} failed)"
            )
    return "\n".join(out)


async def soak_run(args: argparse.Namespace, workdir: Path) -> str:
    with bench_servers(workdir) as (kafka, mongo, server_pids):
        prefix = f"soak{int(time.time())}."
        env = {
            "RUNSTORE_KAFKA_BOOTSTRAP": kafka,
            "RUNSTORE_MONGO_URL": mongo,
            "RUNSTORE_MONGO_DATABASE": prefix.strip("."),
            "RUNSTORE_TOPIC_PREFIX": prefix,
            "RUNSTORE_LOG_LEVEL": "WARNING",
        }
        stack = Stack(env=env, log_dir=workdir, api_port=free_port())
        try:
            for service in SERVICES:
                stack.start(service)
            pids = {s: stack.procs[s].pid for s in SERVICES}
            pids |= {("ferretdb" if k == "mongo" else k): v for k, v in server_pids.items()}
            await asyncio.sleep(5)  # let the consumers join before the clock starts
            soak = Soak(
                kafka, f"{prefix}workflows.commands", stack.api_url, args.rate, args.minutes * 60
            )
            headers = {"Authorization": "Bearer soak"}
            meter = CpuMeter(pids | {"soak client": os.getpid()}, alone="soak client")
            store: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo)
            async with httpx.AsyncClient(
                base_url=stack.api_url, headers=headers, timeout=60
            ) as client:
                meter.begin()
                await asyncio.gather(
                    soak.load(),
                    soak.sampler(pids, args.sample_every, prefix),
                    *(
                        soak.point_reader(client, 0.05, "point", soak.recent, EXECUTION_ROUTE)
                        for _ in range(args.point_readers)
                    ),
                    *(
                        soak.point_reader(client, 0.05, "run", soak.recent_runs, RUN_ROUTE)
                        for _ in range(args.run_readers)
                    ),
                    *(soak.list_reader(client, 0.5) for _ in range(args.list_readers)),
                    *(
                        soak.store_reader(store, read_models_name({**os.environ, **env}))
                        for _ in range(args.store_readers)
                    ),
                )
                meter.end()
                metrics = (await client.get("/metrics")).text
            await store.close()
            for service in SERVICES:
                if stack.procs[service].poll() is not None:
                    print(f"[soak] {service} died:\n{stack.log_tail(service)}", file=sys.stderr)
            return (
                report(soak, args, meter.used)
                + "\n\n"
                + api_side_table(metrics)
                + f"\n\npoint reads by path (API): {point_read_paths(metrics)}"
            )
        finally:
            stack.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=300, help="commands per second")
    parser.add_argument(
        "--sample-every", type=float, default=30.0, help="seconds between RSS samples"
    )
    parser.add_argument("--point-readers", type=int, default=4)
    parser.add_argument(
        "--run-readers", type=int, default=0, help="readers of recent runs by run id (get_run)"
    )
    parser.add_argument("--list-readers", type=int, default=1)
    parser.add_argument(
        "--store-readers", type=int, default=1, help="readers of the store itself (no API)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runstore-soak-") as tmp:
        table = asyncio.run(soak_run(args, Path(tmp)))
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
