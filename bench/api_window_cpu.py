"""The API's CPU per command window on a real broker: `services/api/command_window.py`
publishing windows of `--records` concurrent commands (random execution ids, so spread
over the commands topic's partitions as the API's starts are), one window at a time.

    .venv/bin/python bench/api_window_cpu.py [--records 26] [--windows 2000] [--rounds 3]

Starts Kafka on free ports (or uses RUNSTORE_KAFKA_BOOTSTRAP), creates Runstore's topics,
then per round publishes `--windows` windows and prints the process's CPU per window and
per record (the lowest round): the Python of the window, aiokafka's producer (the
accumulator, the sender, the produce request and its response) and the socket calls; the
broker's CPU is not in it. A record's payload is a start command's size (~600 bytes).
`--calls` counts the Python and C function calls per window instead (the bench's own
included; a count the box's load does not blur). Compare two checkouts by running each
one's copy, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import uvloop  # noqa: E402
from servers import bench_servers  # noqa: E402

from services.api.command_window import WindowedPublisher  # noqa: E402
from services.common.kafka_io import Outgoing  # noqa: E402
from services.common.kafka_topics import ensure_topics  # noqa: E402
from services.common.settings import RunstoreSettings  # noqa: E402

PAYLOAD = b"x" * 600


class CallCounter:
    def __init__(self) -> None:
        self.count = 0

    def note(self, _frame: Any, event: str, _arg: Any) -> None:
        if event in ("call", "c_call"):
            self.count += 1


async def measure(
    kafka: str, records: int, windows: int, rounds: int, calls: CallCounter | None = None
) -> list[float]:
    settings = RunstoreSettings(kafka_bootstrap=kafka)
    await ensure_topics(settings)
    topic = settings.topics.commands
    # linger long, no quiet time: each window is ended by hand, so every window
    # holds exactly `records` records whatever the box's timing.
    publisher = WindowedPublisher(settings, "bench-window", window_ms=60_000)
    await publisher.start()
    per_window: list[float] = []
    try:
        for round_ in range(rounds + 1):  # the first round warms up
            cpu = time.process_time()
            if round_ and calls is not None:
                sys.setprofile(calls.note)
            for _ in range(windows):
                batch = [
                    publisher.publish([Outgoing(topic, os.urandom(8).hex(), PAYLOAD, {})])
                    for _ in range(records)
                ]
                tasks = [asyncio.ensure_future(b) for b in batch]
                await asyncio.sleep(0)  # every record joins the window
                publisher._window_over()  # the window ends now (what its timer does)
                await asyncio.gather(*tasks)
            sys.setprofile(None)
            if round_:
                per_window.append((time.process_time() - cpu) / windows)
    finally:
        await publisher.stop()
    return per_window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=26)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--calls", action="store_true", help="count function calls per window instead"
    )
    args = parser.parse_args()
    calls = CallCounter() if args.calls else None
    with (
        tempfile.TemporaryDirectory(prefix="runstore-window-bench-") as tmp,
        bench_servers(Path(tmp)) as (kafka, _mongo, _pids),
    ):
        rounds = uvloop.run(measure(kafka, args.records, args.windows, args.rounds, calls))
    if calls is not None:
        per = calls.count / (args.windows * args.rounds)
        print(f"{REPO}: {per:.0f} function calls per window of {args.records} records")
        return 0
    best = min(rounds)
    print(
        f"{REPO}: {best * 1e6:.0f} us of CPU per window of {args.records} records, "
        f"{best * 1e6 / args.records:.1f} us per record (lowest of {args.rounds} x "
        f"{args.windows}; rounds {', '.join(f'{r * 1e6:.0f}' for r in rounds)}); load "
        f"{Path('/proc/loadavg').read_text().split()[0]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
