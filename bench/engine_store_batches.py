"""The store's part of a drain, alone: the engine's own rounds of a backlog (batches of
2,000 commands of bench/engine_throughput.py's workload, decided by the real processor),
appended with `MongoEventStore.append_round` to the MongoDB-protocol server, in variants
that alternate round by round in the same server, so that they compare under the same
load.

    .venv/bin/python bench/engine_store_batches.py [--commands 40000] [--batch 2000]
        [--variants compact,ids-on-top,whole] [--repeat 2]

Variants (comma-separated; each appends every round of the workload into a database of
its own, the variants taking turns round by round):
- `compact`: the commit documents as the engine writes them (`commit_to_doc`: the lean
  layout, ids in `_id`);
- `ids-on-top`: the compact body with every id at the top level, as engines wrote them
  on 2026-12-06 before the lean layout;
- `whole`: the whole commit in the body, as engines wrote them before the compact body;

Prints per variant: the median and total elapsed time per round (the store's critical
path in a drain), the server's CPU (FerretDB started here on a free port, or the local
one RUNSTORE_MONGO_URL names) and this process's CPU per command, and the documents'
mean size.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import bson  # noqa: E402
from cpu_meter import cpu_seconds  # noqa: E402
from engine_throughput import workload  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from servers import mongo_server  # noqa: E402

from schemas.commits import Commit  # noqa: E402
from services.common import commit_log  # noqa: E402
from services.engine import mongo_event_store  # noqa: E402
from services.engine.event_store import RoundReport  # noqa: E402
from services.engine.memory_event_store import MemoryEventStore  # noqa: E402
from services.engine.mongo_event_store import MongoEventStore  # noqa: E402
from services.engine.processor import CommandProcessor, InboundRecord, StateCache  # noqa: E402

PARTITIONS = 12


class _Recording(MemoryEventStore):
    """The in-memory store, keeping every round the processor appends."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[tuple[list[Commit], list[Commit]]] = []

    async def append_round(self, firsts: Sequence[Commit], rest: Sequence[Commit]) -> RoundReport:
        self.rounds.append((list(firsts), list(rest)))
        return await super().append_round(firsts, rest)


def _batches(n: int, batch: int) -> list[list[InboundRecord]]:
    """The workload as the engine consumes a backlog: per partition in offset order, a
    slice of each partition per batch."""
    import json
    import zlib

    parts: list[list[InboundRecord]] = [[] for _ in range(PARTITIONS)]
    for command in workload(n, random.Random(7)):
        key = command["execution_id"].encode()
        p = zlib.crc32(key) % PARTITIONS
        parts[p].append(InboundRecord(p, len(parts[p]), key, json.dumps(command).encode()))
    per = max(1, batch // PARTITIONS)
    out: list[list[InboundRecord]] = []
    for start in range(0, max(len(p) for p in parts), per):
        out.append([r for p in parts for r in p[start : start + per]])
    return out


async def _rounds(n: int, batch: int) -> list[tuple[list[Commit], list[Commit]]]:
    store = _Recording()
    processor = CommandProcessor(store, StateCache(1_000_000), time.time_ns)
    for records in _batches(n, batch):
        await processor.process(records)
    return store.rounds


def _whole_body_doc(commit: Commit, compact: bool = True) -> dict[str, Any]:
    return commit_log.commit_to_doc(commit, compact=False)


def _ids_on_top_doc(commit: Commit, compact: bool = True) -> dict[str, Any]:
    """The compact body with the ids at the top level (2026-12-06, before the lean
    layout): the same body without the command type and run id, which were top-level
    fields (as that code built it: one `model_dump_json` with its exclusions)."""
    exclude = {**commit_log._derived(commit), "command_type": True, "run_id": True}
    # The ids at the top level as the layout every version reads has them.
    doc = commit_log.commit_to_doc(commit, compact=False)
    doc["body"] = commit.model_dump_json(exclude_none=True, exclude=exclude)
    return doc


_VARIANTS: dict[str, Any] = {
    "compact": commit_log.commit_to_doc,
    "ids-on-top": _ids_on_top_doc,
    "whole": _whole_body_doc,
}


async def run(url: str, pid: int | None, args: argparse.Namespace) -> None:
    rounds = await _rounds(args.commands, args.batch)
    names = args.variants.split(",")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
    stores: dict[str, MongoEventStore] = {}
    tag = uuid.uuid4().hex[:6]
    for name in names:
        stores[name] = MongoEventStore(client[f"bench_sb_{tag}_{name}"])
        await stores[name].setup()
    elapsed: dict[str, list[float]] = {n: [] for n in names}
    server: dict[str, float] = dict.fromkeys(names, 0.0)
    own: dict[str, float] = dict.fromkeys(names, 0.0)
    size: dict[str, list[int]] = {n: [] for n in names}
    commands = 0
    try:
        for repeat in range(args.repeat):
            for number, (firsts, rest) in enumerate(rounds):
                commands += len(firsts) + len(rest)
                # Each variant in turn, the order rotating, so none always goes first.
                shift = (number + repeat) % len(names)
                for name in names[shift:] + names[:shift]:
                    to_doc = _VARIANTS[name]
                    mongo_event_store.commit_to_doc = to_doc  # the adapter's encoder
                    if number == 0:
                        size[name] = [len(bson.encode(to_doc(c))) for c in rest[:200]]
                    # Commits of this repeat: ids of their own, so nothing is refused.
                    f = [_renamed(c, repeat) for c in firsts]
                    r = [_renamed(c, repeat) for c in rest]
                    s0 = cpu_seconds(pid) if pid else 0.0
                    c0, t0 = time.process_time(), time.perf_counter()
                    result = await stores[name].append_round(f, r)
                    elapsed[name].append(time.perf_counter() - t0)
                    own[name] += time.process_time() - c0
                    server[name] += (cpu_seconds(pid) - s0) if pid else float("nan")
                    if result.refused or result.report.failure is not None:
                        raise RuntimeError(f"{name}: a round was refused: {result.report}")
    finally:
        mongo_event_store.commit_to_doc = commit_log.commit_to_doc
        for name in names:
            await client.drop_database(f"bench_sb_{tag}_{name}")
        await client.close()
    per_variant = commands / len(names)
    print(
        f"store rounds of a drain — {args.commands} commands in batches of {args.batch}, "
        f"{len(rounds)} rounds x {args.repeat}, variants taking turns ({REPO})"
    )
    print(
        f"  {'variant':10} {'median ms/round':>16} {'total s':>8} {'server µs/cmd':>14} "
        f"{'client µs/cmd':>14} {'doc bytes':>10}"
    )
    for name in names:
        e = elapsed[name]
        print(
            f"  {name:10} {statistics.median(e) * 1000:16.1f} {sum(e):8.2f} "
            f"{server[name] / per_variant * 1e6:14.1f} {own[name] / per_variant * 1e6:14.1f} "
            f"{statistics.mean(size[name]):10.0f}"
        )


def _renamed(commit: Commit, repeat: int) -> Commit:
    if repeat == 0:
        return commit
    suffix = f"~{repeat}"
    events = [
        e.model_copy(
            update={
                "execution_id": e.execution_id + suffix,
                "run_id": e.run_id + suffix,
                "root_execution_id": e.root_execution_id + suffix,
                "event_id": f"{e.execution_id}{suffix}:{e.seq}:{e.index}",
                "command_id": e.command_id + suffix,
            }
        )
        for e in commit.events
    ]
    state = dict(commit.state)
    for key in ("execution_id", "run_id", "root_execution_id"):
        if key in state:
            state[key] = state[key] + suffix
    return commit.model_copy(
        update={
            "execution_id": commit.execution_id + suffix,
            "run_id": commit.run_id + suffix,
            "command_id": commit.command_id + suffix,
            "events": events,
            "state": state,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=40000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--variants", default="compact,ids-on-top")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="runstore-store-batches-") as tmp,
        mongo_server(Path(tmp)) as (url, pid),
    ):
        asyncio.run(run(url, pid, args))


if __name__ == "__main__":
    main()
