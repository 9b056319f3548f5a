"""Where the write path's CPU goes over time: per process, and inside the Kafka broker by
thread (compilers, request handlers, network threads, GC, KRaft ...).

    .venv/bin/python bench/broker_threads.py [--windows 3] [--seconds 15] [--idle 10]
        [--clients 32]

Starts the same stack as bench/http_gateway.py (a fresh broker and FerretDB on free
ports, engine, projector and API as processes), then measures an idle window, N loaded
windows of HTTP executes back to back (each followed by its read phase) and a last idle
window. It prints, per window, CPU by process (ms per second when idle, ms per start when
loaded) and the broker's CPU by thread group, from `/proc/<pid>/task/*/stat` deltas with
each native thread named by `jstack` (Linux truncates thread names to 15 characters).
Set KAFKA_JVM_PERFORMANCE_OPTS to try other JIT/GC flags (deploy/local/infra.py).
docs/write-path-cost.md has what it showed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_gateway as hg
from cpu_meter import CpuMeter

TICK = os.sysconf("SC_CLK_TCK")


def java_thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Java thread name, from `jstack` (empty if it is missing)."""
    try:
        dump = subprocess.run(["jstack", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return {}
    return {
        int(m.group(2), 16): m.group(1)
        for m in re.finditer(r'^"([^"]+)".*? nid=(0x[0-9a-f]+)', dump, re.MULTILINE)
    }


def thread_group(name: str) -> str:
    """A thread's group: its name without numbers and listener details."""
    name = re.sub(r"ListenerName\(\w+\)-\w+-\d+", "", name)
    return re.sub(r"[\d-]+$", "", name.replace("data-plane-kafka-", "")) or name


def thread_cpu(pid: int, names: dict[int, str]) -> Counter[str]:
    """CPU seconds of each thread group of a process so far."""
    used: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = names.get(int(task.name)) or (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        used[thread_group(name)] += (int(fields[11]) + int(fields[12])) / TICK
    return used


class ThreadMeter(CpuMeter):
    """CpuMeter that also splits the broker's CPU by thread group."""

    def __init__(self, pids: dict[str, int], names: dict[int, str]) -> None:
        super().__init__(pids)
        self._names = names
        self._before: Counter[str] = Counter()
        self.threads: dict[str, float] = {}

    def begin(self) -> None:
        self._before = thread_cpu(self.pids["kafka"], self._names)
        super().begin()

    def end(self) -> None:
        super().end()
        after = thread_cpu(self.pids["kafka"], self._names)
        self.threads = {k: v - self._before.get(k, 0.0) for k, v in after.items()}


def breakdown(used: dict[str, float], per: float, top: int = 12) -> str:
    ranked = sorted(used.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {1000 * v / per:.2f}" for k, v in ranked if v > 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="runstore-broker-threads-") as tmp,
        hg.runstore_stack(Path(tmp)) as (url, pids),
    ):
        names = java_thread_names(pids["kafka"])

        def idle(label: str) -> None:
            meter = ThreadMeter(pids, names)
            meter.begin()
            time.sleep(args.idle)
            meter.end()
            print(f"{label} idle, ms of CPU per second: {breakdown(meter.used, args.idle)}")
            print(f"  kafka by thread: {breakdown(meter.threads, args.idle)}", flush=True)

        idle("first")
        for window in range(1, args.windows + 1):
            made: list[ThreadMeter] = []

            def meter(pids: dict[str, int], made: list[ThreadMeter] = made) -> ThreadMeter:
                made.append(ThreadMeter(pids, names))
                return made[-1]

            hg.CpuMeter = meter  # type: ignore[assignment,misc]  # bench_runstore's meter
            r = asyncio.run(hg.bench_runstore(url, args.clients, args.seconds, 1, pids))
            print(
                f"window {window}: {r.rate:.1f} starts/s, start p50 {hg.pct(r.start_ms, 0.5):.1f}"
                f" p99 {hg.pct(r.start_ms, 0.99):.1f} ms; ms of CPU per start: "
                f"{breakdown(r.cpu_seconds, r.starts)}"
            )
            print(f"  kafka by thread: {breakdown(made[0].threads, r.starts)}", flush=True)
        idle("last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
