"""FerretDB's CPU per second under a trickle of writes: its fixed cost, alternating binaries.

    .venv/bin/python bench/ferretdb_trickle.py [--seconds 20] [--rate 20] [--rounds 3]
        [--collections 8] --variant name=BINARY ...

What a FerretDB server spends besides the requests themselves (e.g. the wrapper's `_id`
index watcher, deploy/local/ferretdb/idindex.go, which looks at every database file that
was written since its last tick, every 200 ms): each variant's server gets `--collections`
collections in one database (as a Runstore store has: commits, runs, executions, ...),
then one small insert every 1/`--rate` s for `--seconds`, so that every tick of the
watcher sees a written file. Printed per run: the server's CPU in ms per second (user +
system, /proc), and per insert, with the load average. Variants run in turn, the order
reversed each round.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ferretdb_starts import cpu_seconds, start_server
from pymongo import MongoClient


def run(binary: str, seconds: float, rate: float, collections: int) -> tuple[float, float]:
    """(CPU ms per second, CPU ms per insert) over `seconds` of one insert per 1/rate s."""
    with tempfile.TemporaryDirectory(prefix="ferretdb-trickle-") as tmp:
        proc, url = start_server(binary, "", Path(tmp) / "db")
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(url)
            db = client["bench"]
            names = [f"c{i}" for i in range(collections)]
            for name in names:
                db.create_collection(name)
            db[names[0]].insert_one({"warm": True})
            time.sleep(1.0)  # the watcher has fixed the new tables' `_id` indexes
            cpu0, wall0, n = cpu_seconds(proc.pid), time.perf_counter(), 0
            while time.perf_counter() - wall0 < seconds:
                db[names[n % collections]].insert_one({"n": n, "pad": "x" * 200})
                n += 1
                time.sleep(max(0.0, wall0 + n / rate - time.perf_counter()))
            used = cpu_seconds(proc.pid) - cpu0
            wall = time.perf_counter() - wall0
            client.close()
        finally:
            proc.terminate()
            proc.wait(30)
    return used * 1000 / wall, used * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0, help="inserts per second")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--collections", type=int, default=8)
    parser.add_argument("--variant", action="append", required=True, help="name=BINARY")
    args = parser.parse_args()
    variants = [tuple(v.split("=", 1)) for v in args.variant]
    results: dict[str, list[str]] = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        for name, binary in variants if r % 2 == 0 else variants[::-1]:
            load = os.getloadavg()[0]
            per_s, per_insert = run(binary, args.seconds, args.rate, args.collections)
            cell = f"{per_s:.2f} ms/s ({per_insert:.3f} ms per insert, load {load:.1f})"
            results[name].append(cell)
            print(f"round {r + 1} {name}: {cell}", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
