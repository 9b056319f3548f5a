"""The engine's store on a start's path, FerretDB alone: how long a wave's insert takes,
with and without the projector's writes beside it, alternating FerretDB builds.

    .venv/bin/python bench/ferretdb_store_path.py [--seconds 20] [--rounds 2]
        [--wave 28] [--wave-ms 40] [--projector-ms 200] [--no-projector]
        [--variant name=[BINARY][;SQLITE_PARAMS[;ENV=VALUE,...]]] ... [--perf-trace]
        [--projector-db NAME] ... [--projector-chunk N] ...

What the HTTP start bench (`bench/http_gateway.py --peers '' --clients 32`) sends FerretDB,
paced as the stack paces it, without the rest of the stack: every `--wave-ms` the engine's
ordered insert of one wave (`--wave` starts: each start's run locator, then its commit;
bench/fixtures/one_start_documents.json with fresh time-ordered ids), the next wave only
once the insert before is answered (the engine stores one round at a time); every
`--projector-ms` the projector's two unordered inserts of what the engine wrote since its
last batch (run rows with their history head, then execution pointers), on a connection
of its own, in the engine's database or in `--projector-db` (another SQLite file, with a
write lock of its own), each insert in requests of at most `--projector-chunk` documents
(0: one request). Repeat `--projector-db` or `--projector-chunk` to alternate their
values with each variant. The waves are timed on the client: the insert's elapsed time
(p50, p90, p99, mean, max), and apart from it what encoding the wave's documents to BSON
costs the client (`bson.encode` of each document, about what PyMongo's bulk insert does
before sending).

Per run, also FerretDB's CPU per start (/proc) and the load average; with `--perf-trace`
the fsyncs FerretDB made over the run (`perf trace -s` on its pid: count and mean time of
`fsync`/`fdatasync`, the WAL's at each COMMIT). Variants (as in bench/ferretdb_starts.py)
run in turn, round after round (A B, B A, ...), each on an empty data directory.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bson
from pymongo import MongoClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "deploy" / "local"))

import infra  # noqa: E402
from ferretdb_starts import FIXTURE, Starts, cpu_seconds, start_server  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def locator(start: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run locator the engine writes before a start's commit (commit_log.run_locators)."""
    run = start["runs"][0] if isinstance(start["runs"], list) else start["runs"]
    return {
        "_id": f"{run['run_id']}:run",
        "command_id": {"run": run["run_id"]},
        "run_of": run["execution_id"],
    }


def fsync_summary(text: str) -> str:
    """`perf trace -s` lines of fsync/fdatasync, summed over threads: count, mean ms."""
    calls, total = 0, 0.0
    for line in text.splitlines():
        m = re.match(r"\s+(fsync|fdatasync)\s+(\d+)\s+\d+\s+([0-9.]+)", line)
        if m:
            calls += int(m.group(2))
            total += float(m.group(3))
    return f"{calls} fsyncs, mean {total / calls:.2f} ms" if calls else "no fsyncs seen"


def run_variant(
    binary: str,
    params: str,
    env: str,
    seconds: float,
    wave: int,
    wave_ms: float,
    projector_ms: float,
    projector: bool,
    perf_trace: bool,
    chunk: int = 0,
    projector_db: str = "bench",
) -> dict[str, Any]:
    source = Starts(FIXTURE, "v7", head=True)
    with tempfile.TemporaryDirectory(prefix="ferretdb-store-path-") as tmp:
        proc, url = start_server(binary, params, Path(tmp) / "db", "", env)
        tracer = None
        try:
            engine: MongoClient[dict[str, Any]] = MongoClient(url)
            writer: MongoClient[dict[str, Any]] = MongoClient(url)
            edb, pdb = engine["bench"], writer[projector_db]
            edb["commits"].create_index("command_id", unique=True, name="command_id_unique")
            for name in ("runs", "executions"):
                pdb.create_collection(name)
            time.sleep(0.5)  # the wrapper's `_id` index fix (idindex.go) runs every 200 ms
            written: list[dict[str, dict[str, Any]]] = []
            lock = threading.Lock()
            stop = threading.Event()
            projector_s: list[float] = []

            def project() -> None:
                next_at = time.perf_counter()
                while not stop.is_set():
                    next_at += projector_ms / 1000
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                    with lock:
                        part, written[:] = written[:], []
                    if not part:
                        continue
                    began = time.perf_counter()
                    step = chunk or len(part)
                    for name in ("runs", "executions"):
                        for k in range(0, len(part), step):
                            docs = [s[name] for s in part[k : k + step]]
                            pdb[name].insert_many(docs, ordered=False)
                    projector_s.append(time.perf_counter() - began)

            # Warm up: a few seconds of waves, not timed.
            for _ in range(int(2000 / wave_ms)):
                batch = [source.next() for _ in range(wave)]
                edb["commits"].insert_many(
                    [*map(locator, batch), *(s["commits"] for s in batch)], ordered=True
                )
            thread = threading.Thread(target=project)
            if projector:
                thread.start()
            if perf_trace:
                tracer = subprocess.Popen(
                    ["perf", "trace", "-s", "-e", "fsync,fdatasync", "-p", str(proc.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            cpu0, load = cpu_seconds(proc.pid), os.getloadavg()[0]
            elapsed: list[float] = []
            encode: list[float] = []
            began = next_at = time.perf_counter()
            while time.perf_counter() - began < seconds:
                next_at += wave_ms / 1000
                batch = [source.next() for _ in range(wave)]
                docs = [*map(locator, batch), *(s["commits"] for s in batch)]
                t0 = time.perf_counter()
                for doc in docs:
                    bson.encode(doc)
                t1 = time.perf_counter()
                edb["commits"].insert_many(docs, ordered=True)
                t2 = time.perf_counter()
                encode.append(t1 - t0)
                elapsed.append(t2 - t1)
                with lock:
                    written.extend(batch)
                time.sleep(max(0.0, next_at - time.perf_counter()))
            cpu = cpu_seconds(proc.pid) - cpu0
            fsyncs = ""
            if tracer is not None:
                tracer.send_signal(2)
                fsyncs = fsync_summary(tracer.communicate(timeout=30)[1])
            stop.set()
            if projector:
                thread.join()
            engine.close()
            writer.close()
        finally:
            if tracer is not None and tracer.poll() is None:
                tracer.kill()
            proc.terminate()
            proc.wait(30)
    ms = [e * 1000 for e in elapsed]
    return {
        "waves": len(ms),
        "p50": percentile(ms, 0.5),
        "p90": percentile(ms, 0.9),
        "p99": percentile(ms, 0.99),
        "mean": statistics.fmean(ms),
        "max": max(ms),
        "encode_ms": statistics.fmean(encode) * 1000,
        "cpu_per_start_ms": cpu * 1000 / (len(ms) * wave),
        "projector_ms": statistics.fmean(projector_s) * 1000 if projector_s else 0.0,
        "load": load,
        "fsyncs": fsyncs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wave", type=int, default=28, help="starts per engine insert")
    parser.add_argument("--wave-ms", type=float, default=40)
    parser.add_argument("--projector-ms", type=float, default=200)
    parser.add_argument("--no-projector", action="store_true")
    parser.add_argument(
        "--projector-db",
        action="append",
        help="the projector's database (default: the engine's, `bench`); another one is "
        "another SQLite file with a write lock of its own; repeat to alternate",
    )
    parser.add_argument(
        "--projector-chunk",
        type=int,
        action="append",
        help="most documents per projector insert request (0: all); repeat to alternate",
    )
    parser.add_argument("--perf-trace", action="store_true", help="count FerretDB's fsyncs")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="name=[BINARY][;SQLITE_PARAMS[;ENV=VALUE,...]] (default binary: this tree's build)",
    )
    args = parser.parse_args()
    variants = []
    for text in args.variant or ["this="]:
        name, _, rest = text.partition("=")
        binary, params, env = [*rest.split(";", 2), "", ""][:3]
        built = binary or str(infra.install_ferretdb())
        chunks = args.projector_chunk or [0]
        dbs = args.projector_db or ["bench"]
        for chunk in chunks:
            for db in dbs:
                label = name + (f"/chunk{chunk}" if len(chunks) > 1 else "")
                label += f"/{db}" if len(dbs) > 1 else ""
                variants.append((label, built, params, env, chunk, db))
    for r in range(args.rounds):
        for name, binary, params, env, chunk, db in variants if r % 2 == 0 else variants[::-1]:
            out = run_variant(
                binary,
                params,
                env,
                args.seconds,
                args.wave,
                args.wave_ms,
                args.projector_ms,
                not args.no_projector,
                args.perf_trace,
                chunk,
                db,
            )
            print(
                f"round {r + 1} {name}: {out['waves']} waves, insert p50 {out['p50']:.2f} "
                f"p90 {out['p90']:.2f} p99 {out['p99']:.2f} mean {out['mean']:.2f} max "
                f"{out['max']:.1f} ms; encode {out['encode_ms']:.2f} ms/wave; projector "
                f"{out['projector_ms']:.1f} ms/batch; FerretDB {out['cpu_per_start_ms']:.3f} "
                f"ms CPU/start; load {out['load']:.1f}"
                + (f"; {out['fsyncs']}" if out["fsyncs"] else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
