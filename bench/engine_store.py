"""What the engine's writes cost the store, per batch: `MongoEventStore.append_round` in a
loop of small rounds, as a worker's workflows make them (a few starts and a few later
commits per batch), against the MongoDB-protocol server.

    .venv/bin/python bench/engine_store.py [REPO] [--rounds 2000] [--firsts 2] [--rest 2]

Each round appends `--firsts` first commits of new executions (each opening a run) and
`--rest` second commits of executions started in the round before. Printed per round:
the server's CPU (from /proc; a FerretDB started here on a free port, or the one
RUNSTORE_MONGO_URL names when it runs on this machine), this process's CPU, the elapsed
time, and the insert requests sent. `REPO` measures another checkout's event store with
the same bench, for alternating runs (its own `services` and `tests/support`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--firsts", type=int, default=2)
    parser.add_argument("--rest", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=200)
    return parser.parse_args()


args = _arguments()
REPO = Path(args.repo).resolve()
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from cpu_meter import cpu_seconds  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from pymongo.monitoring import (  # noqa: E402
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)
from servers import mongo_server  # noqa: E402

from services.engine.mongo_event_store import MongoEventStore  # noqa: E402
from tests.support.commits import make_commit  # noqa: E402


class Requests(CommandListener):
    """Counts the write requests the client sends."""

    def __init__(self) -> None:
        self.writes = 0

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name in ("insert", "update", "delete"):
            self.writes += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


async def run(url: str, server_pid: int | None) -> None:
    requests = Requests()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, tz_aware=True, event_listeners=[requests]
    )
    db = client[f"bench_store_{uuid.uuid4().hex[:8]}"]
    store = MongoEventStore(db)
    await store.setup()
    tag = uuid.uuid4().hex[:6]
    previous: list[str] = []

    async def one_round(n: int) -> None:
        nonlocal previous
        started = [f"{tag}-{n}-{i}" for i in range(args.firsts)]
        firsts = [make_commit(e, 1, run_id=f"{e}-run") for e in started]
        rest = [make_commit(e, 2, run_id=f"{e}-run") for e in previous[: args.rest]]
        round_ = await store.append_round(firsts, rest)
        if round_.refused or round_.report.failure is not None:
            raise RuntimeError(f"a round of new commits was refused: {round_}")
        previous = started

    try:
        for n in range(args.warmup):
            await one_round(-n - 1)
        writes = requests.writes
        server = cpu_seconds(server_pid) if server_pid else 0.0
        own, wall = time.process_time(), time.perf_counter()
        for n in range(args.rounds):
            await one_round(n)
        wall = time.perf_counter() - wall
        own = time.process_time() - own
        server = (cpu_seconds(server_pid) - server) if server_pid else float("nan")
        writes = requests.writes - writes
    finally:
        await client.drop_database(db.name)
        await client.close()
    per = 1e6 / args.rounds
    print(
        f"{args.rounds} rounds of {args.firsts} first + {args.rest} later commits "
        f"({REPO}):\n"
        f"  per round: server CPU {server * per:.0f} µs, this process {own * per:.0f} µs, "
        f"elapsed {wall * per:.0f} µs, write requests {writes / args.rounds:.2f}"
    )


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="runstore-engine-store-") as tmp,
        mongo_server(Path(tmp)) as (url, pid),
    ):
        asyncio.run(run(url, pid))


if __name__ == "__main__":
    main()
