"""FerretDB's CPU per projector-shaped workflow under server settings, alternating.

    .venv/bin/python bench/ferretdb_cpu.py [--workflows 3000] [--rounds 2]
        [--variant base=] [--variant gogc400=GOGC=400] ...

Each variant starts its own FerretDB (deploy/local/infra.py; a variant is `name=ENV=VALUE,...`
applied to the server's environment, e.g. `RUNSTORE_FERRETDB_SQLITE_PARAMS=_pragma=...`),
then writes what the projector writes for one-activity workflows — per batch of `--batch`
workflows one unordered insert each of history chunks, run rows and pointers; then, for
the share `--replaced` of them, the replaces of a second batch (bulk `ReplaceOne` in
chunks of 10, as services/common/readmodels/mongo_store.py does) — and one `_id` read per
workflow. Printed: the server's CPU (user + system, /proc) per workflow, the wall time
and the server's peak resident memory, per variant and round; variants run in turn
(A B A B) so they see the same load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

from pymongo import MongoClient, ReplaceOne

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "local"))

import infra


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def docs_of(n: int, closed: bool) -> tuple[dict, dict, dict]:
    run_id = uuid.uuid4().hex
    execution_id = uuid.uuid4().hex
    pad = "y" * 200
    events = "\n".join(
        f'{{"event_number": {i}, "type": "X", "pad": "{pad}"}}'
        for i in range(1, 6 if closed else 2)
    )
    chunk = {
        "_id": f"{run_id}:000000",
        "run_id": run_id,
        "first": 1,
        "last": 5 if closed else 1,
        "count": 5 if closed else 1,
        "body": zlib.compress(events.encode(), 1),
    }
    run = {
        "_id": run_id,
        "execution_id": execution_id,
        "workflow_name": "bench-one-activity",
        "display_name": "bench-one-activity",
        "root_execution_id": execution_id,
        "parent_execution_id": None,
        "deployment_name": None,
        "user_id": "u",
        "internal": False,
        "search_keys": {},
        "search_terms": [],
        "workflow_tags": [],
        "status": "COMPLETED" if closed else "RUNNING",
        "start_time": None,
        "end_time": None,
        "total_duration_ms": 3 if closed else None,
        "result_json": str(n) if closed else None,
        "failure_json": None,
        "attempt": 1,
        "event_count": 5 if closed else 1,
        "seq": 2 if closed else 1,
        "position": [2 if closed else 1, 3 if closed else 0],
    }
    pointer = {
        "_id": execution_id,
        "latest_run_id": run_id,
        "root_execution_id": execution_id,
        "seq": run["seq"],
        "position": run["position"],
    }
    return chunk, run, pointer


def workload(url: str, workflows: int, batch: int, replaced: float) -> None:
    client: MongoClient = MongoClient(url)
    db = client["bench"]
    done = 0
    while done < workflows:
        n = min(batch, workflows - done)
        firsts = [docs_of(done + i, closed=False) for i in range(n)]
        k = round(n * replaced)
        # Inserted: the ones whose both commits came in one batch are inserted closed.
        inserted = [docs_of(done + i, closed=True) for i in range(n - k)] + firsts[:k]
        for j, name in enumerate(("history", "runs", "executions")):
            db[name].insert_many([d[j] for d in inserted], ordered=False)
        for j, name in enumerate(("history", "runs", "executions")):
            ops = []
            for chunk, run, pointer in firsts[:k]:
                doc = (chunk, run, pointer)[j]
                ops.append(ReplaceOne({"_id": doc["_id"]}, {**doc, "seq": 2}, upsert=True))
            for c in range(0, len(ops), 10):
                db[name].bulk_write(ops[c : c + 10], ordered=False)
        for _, run, _ in inserted:
            db["runs"].find_one({"_id": run["_id"]})
        done += n
    client.close()


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition("=")
    env = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        env[key] = value
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--replaced",
        type=float,
        default=0.5,
        help="share of a batch's workflows whose second commit comes later",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["base="])]
    head = f"{'variant':<12} {'round':>5} {'cpu ms/wf':>10} {'wall s':>7} {'peak MB':>8}"
    print(f"{head} {'load':>5}")
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for name, env in order:
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                with tempfile.TemporaryDirectory(prefix="ferretdb-cpu-") as tmp:
                    handle = infra.start_ferretdb(infra.free_port(), Path(tmp) / "f")
                    try:
                        before = cpu_seconds(handle.pid)
                        started = time.monotonic()
                        workload(handle.address, args.workflows, args.batch, args.replaced)
                        wall = time.monotonic() - started
                        cpu = cpu_seconds(handle.pid) - before
                        rss = peak_rss_mb(handle.pid)
                    finally:
                        handle.stop()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            load = os.getloadavg()[0]
            print(
                f"{name:<12} {r:>5} {cpu * 1000 / args.workflows:>10.3f} {wall:>7.1f} "
                f"{rss:>8.0f} {load:>5.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
