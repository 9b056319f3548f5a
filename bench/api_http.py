"""The API per HTTP start on the stack of `bench/http_gateway.py`: its CPU per start (user
and system), and optionally a py-spy profile of it over the measured window.

    .venv/bin/python bench/api_http.py [--clients 32] [--seconds 15] [--rate R]
        [--env KEY=VALUE ...] [--spy OUT]

Starts Kafka, FerretDB, the engine, the projector and the API (as `bench/http_gateway.py
--peers ''`), drives POST execute from `--clients` clients (closed loop, or paced to
`--rate`) and prints, over the measured window of the starts (not the read phase after
it): starts/s, start p50/p99, the load average before and after, every process's CPU per
start, and the API's split into user and system time. `--spy OUT` writes a py-spy
profile of the API over the window (raw format, native frames; fold it with any
flame-graph tool). Run it alternating with another checkout's copy to compare builds:
each measures its own repository's code.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "deploy" / "local"))

import http_gateway as hg  # noqa: E402
from cpu_meter import CpuMeter, loadavg, py_spy, user_sys  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=0, help="starts/s (0: closed loop)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for services")
    parser.add_argument("--spy", type=Path, help="py-spy the API into this raw file")
    args = parser.parse_args()
    extra = dict(pair.split("=", 1) for pair in args.env)
    window: dict[str, Any] = {}
    load = [loadavg()]
    with (
        tempfile.TemporaryDirectory(prefix="runstore-api-http-") as tmp,
        hg.runstore_stack(Path(tmp), extra_env=extra) as (url, pids),
    ):
        api = pids["api"]

        class Meter(CpuMeter):
            def begin(self) -> None:
                window["us"] = user_sys(api)
                window["t"] = time.monotonic()
                load.append(loadavg())
                if args.spy:
                    window["spy"] = py_spy(api, int(args.seconds) + 30, args.spy, 200)
                super().begin()

            def end(self) -> None:
                super().end()
                if "spy" in window:  # the window is over: so is the profile
                    window["spy"].send_signal(signal.SIGINT)
                u, s = user_sys(api)
                window["user"], window["sys"] = u - window["us"][0], s - window["us"][1]
                load.append(loadavg())

        hg.CpuMeter = Meter  # type: ignore[misc]
        r = asyncio.run(
            hg.bench_runstore(url, args.clients, args.seconds, args.warmup, pids, args.rate)
        )
        if "spy" in window:
            window["spy"].wait()
    starts = r.starts
    if not starts:
        print("no start counted")
        return 1
    servers = sum(v for k, v in r.cpu_seconds.items() if k != "bench client")
    print(
        f"{r.rate:.1f} starts/s ({starts} in {args.seconds:g} s"
        + (f", paced to {args.rate:g}/s" if args.rate else ", closed loop")
        + f", {args.clients} clients), start p50 {hg.pct(r.start_ms, 0.5):.1f} "
        f"p99 {hg.pct(r.start_ms, 0.99):.1f} ms; load {' -> '.join(load)}"
    )
    print(
        "ms of CPU per start: "
        + ", ".join(f"{k} {1000 * v / starts:.3f}" for k, v in r.cpu_seconds.items())
        + f"; servers {1000 * servers / starts:.2f}"
    )
    print(
        f"api: user {1000 * window['user'] / starts:.3f}, system "
        f"{1000 * window['sys'] / starts:.3f} ms per start"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
