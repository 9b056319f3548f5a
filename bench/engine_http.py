"""The engine per HTTP start: its CPU per batch and per start, what its loop does between
batches, and where a start's time goes in it, on the stack of `bench/http_gateway.py`.

    .venv/bin/python bench/engine_http.py [--clients 32] [--seconds 15] [--rate R]
        [--env KEY=VALUE ...] [--perf] [--spy OUT]

Starts Kafka, FerretDB, the engine, the projector and the API (as `bench/http_gateway.py
--peers ''`), drives POST execute from `--clients` clients (closed loop, or paced to
`--rate`), and over the measured window prints:

- starts/s, start p50/p99, CPU per start of every process (from /proc);
- the engine's batches: how many per second, commands per batch (the engine's
  `runstore_batch_size`), its CPU per batch and per start, user against system time;
- with `--perf`: `perf stat` on the engine over the window: context switches (wake-ups)
  and system calls per batch, the calls by kind (needs `perf` and its tracepoints);
- where a batch's time goes in the engine (`runstore_engine_batch_stage_seconds`: fetch,
  decide, wait, store, complete, publish; mean and p50 from the histogram's buckets);
- with `--spy OUT`: a py-spy profile of the engine over the window (raw, with native
  frames and threads; `--idle` samples left out by py-spy's own rule).

`--env` passes settings to the services (e.g. `--env RUNSTORE_ENGINE_FETCH_WAIT_MS=10`).
Run it alternating with another checkout's copy (`python OTHER/bench/engine_http.py`) to
compare builds: each measures its own repository's code.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "deploy" / "local"))

import http_gateway as hg  # noqa: E402
import infra  # noqa: E402
from cpu_meter import CpuMeter, loadavg, py_spy, user_sys  # noqa: E402
from engine_metrics import delta, scrape, stage_table  # noqa: E402


def short_event(name: str) -> str:
    return name.replace("raw_syscalls:sys_enter", "syscalls").replace("syscalls:sys_enter_", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=0, help="starts/s (0: closed loop)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for services")
    parser.add_argument("--perf", action="store_true", help="perf stat the engine (syscalls)")
    parser.add_argument("--spy", type=Path, help="py-spy the engine into this raw file")
    args = parser.parse_args()
    health = infra.free_port()
    extra = {"RUNSTORE_ENGINE_HEALTH_PORT": str(health)}
    extra.update(dict(pair.split("=", 1) for pair in args.env))
    window: dict[str, Any] = {}
    load = [loadavg()]
    with (
        tempfile.TemporaryDirectory(prefix="runstore-engine-http-") as tmp,
        hg.runstore_stack(Path(tmp), extra_env=extra) as (url, pids),
    ):
        engine = pids["engine"]

        class Meter(CpuMeter):
            def begin(self) -> None:
                window["metrics"] = scrape(health)
                window["us"] = user_sys(engine)
                window["t"] = time.monotonic()
                if args.perf:
                    window["perf"] = subprocess.Popen(
                        [
                            "perf",
                            "stat",
                            "-x",
                            ",",
                            "-p",
                            str(engine),
                            "-e",
                            "task-clock,context-switches,raw_syscalls:sys_enter",
                            "-e",
                            "syscalls:sys_enter_write,syscalls:sys_enter_sendto",
                            "-e",
                            "syscalls:sys_enter_recvfrom,syscalls:sys_enter_read",
                            "-e",
                            "syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait",
                            "-e",
                            "syscalls:sys_enter_futex,syscalls:sys_enter_getpid",
                            "-e",
                            "syscalls:sys_enter_epoll_ctl",
                            "--",
                            "sleep",
                            str(args.seconds),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                if args.spy:
                    window["spy"] = py_spy(engine, int(args.seconds), args.spy, 250, threads=True)
                super().begin()

            def end(self) -> None:
                super().end()
                window["elapsed"] = time.monotonic() - window["t"]
                u, s = user_sys(engine)
                window["user"], window["sys"] = u - window["us"][0], s - window["us"][1]
                window["metrics"] = delta(scrape(health), window["metrics"])
                load.append(loadavg())

        hg.CpuMeter = Meter  # type: ignore[misc]
        r = asyncio.run(
            hg.bench_runstore(url, args.clients, args.seconds, args.warmup, pids, args.rate)
        )
        perf_out = ""
        if "perf" in window:
            perf_out = window["perf"].communicate()[1]
        if "spy" in window:
            window["spy"].wait()
    starts = r.starts
    if not starts:
        print("no start counted")
        return 1
    d: Counter[tuple[str, str]] = window["metrics"]
    batches = d[("runstore_batch_size_count", 'service="engine"')]
    commands = d[("runstore_batch_size_sum", 'service="engine"')]
    eng = r.cpu_seconds["engine"]
    servers = sum(v for k, v in r.cpu_seconds.items() if k != "bench client")
    seconds = window["elapsed"]
    print(
        f"{r.rate:.1f} starts/s ({starts} in {args.seconds:g} s"
        + (f", paced to {args.rate:g}/s" if args.rate else ", closed loop")
        + f", {args.clients} clients), start p50 {hg.pct(r.start_ms, 0.5):.1f} "
        f"p99 {hg.pct(r.start_ms, 0.99):.1f} ms; load {load[0]} -> {load[-1]}"
    )
    print(
        "ms of CPU per start: "
        + ", ".join(f"{k} {1000 * v / starts:.2f}" for k, v in r.cpu_seconds.items())
        + f"; servers {1000 * servers / starts:.2f}"
    )
    if batches:
        print(
            f"engine: {batches / seconds:.1f} batches/s, {commands / batches:.1f} commands per "
            f"batch; CPU {1000 * eng / batches:.2f} ms per batch, {1000 * eng / starts:.3f} ms "
            f"per start (user {1000 * window['user'] / starts:.3f}, system "
            f"{1000 * window['sys'] / starts:.3f})"
        )
    if perf_out and batches:
        counts: dict[str, float] = {}
        for line in perf_out.splitlines():
            parts = line.split(",")
            if len(parts) > 3 and parts[0].replace(".", "").isdigit():
                counts[parts[2]] = float(parts[0])
        print(
            "engine per batch (perf stat): "
            + ", ".join(
                f"{short_event(k)} {v / batches:.1f}"
                for k, v in counts.items()
                if k != "task-clock"
            )
        )
    print("where a batch's time goes in the engine:")
    print("\n".join(stage_table(d)))
    replies = {k[1]: v for k, v in d.items() if k[0] == "runstore_engine_replies_total" and v}
    if replies:  # the direct reply channel (docs/api-gateway.md): outcomes by result
        print("engine direct replies: " + ", ".join(f"{k} {v:.0f}" for k, v in replies.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
