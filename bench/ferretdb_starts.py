"""FerretDB's CPU per HTTP start, from the requests a start sends it, alternating variants.

    .venv/bin/python bench/ferretdb_starts.py [--starts 6000] [--warmup 1000] [--rounds 3]
        [--variant name=[BINARY][;SQLITE_PARAMS[;ENV=VALUE,...]]] ...
        [--layout chunk|head] ... [--ids random|v7] ... [--execution-ids bench|api]

What bench/ferretdb_census.py counted under the HTTP start bench (`--peers '' --clients
32`), without the rest of the stack: per start one commit (the engine's ordered insert
into `commits`, `--engine-batch` commits per request, with its unique `command_id`
index), and the projector's three unordered inserts per batch of `--projector-batch`
starts (a history chunk, a run row, an execution pointer each). `--layout head` (tenth
session) writes a start as the projector does since then: the history chunk's fields in
the run row (`history_head`), two inserts per batch; `--layout chunk --layout head`
alternates both layouts with each variant. The documents are one
real start's (bench/fixtures/one_start_documents.json, from `ferretdb_census.py --dump`)
with fresh ids per start, shaped as the bench's: execution ids `h-<run>-<n>`, random
run and command ids. `--ids v7` (eleventh session) makes the command ids as the API
does since then (services/common/ids.py `new_id`, version 7 UUIDs: time first) and the
run ids as the engine derives them from those (`derived_id(..., time_of=)`); `--ids random
--ids v7` alternates both with each variant. `--execution-ids api` gives each start an
execution id the API would make (a random UUID with `--ids random`, `new_id` with `--ids
v7`) instead of the HTTP bench's `h-<run>-<n>`. The engine's and the projector's
requests go on two connections at once, as in the stack.

Each variant runs its own FerretDB wrapper on an empty data directory: a binary (default:
the one this tree builds, deploy/local/infra.py), extra SQLite URL parameters (the
wrapper's `--sqlite-params`, applied after its own) and its environment's additions
(e.g. `GOGC=400`). Variants run in turn, round after
round (A B, B A, ...), so they see the same load. Printed per run: FerretDB's CPU per
start (user + system from /proc), starts per second, its peak resident memory, and the
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bson import json_util
from pymongo import MongoClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy" / "local"))

import infra  # noqa: E402

sys.path.insert(0, str(REPO))
from services.common.ids import derived_id, new_id  # noqa: E402

FIXTURE = REPO / "bench" / "fixtures" / "one_start_documents.json"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Starts:
    """Fresh copies of one start's documents: its ids replaced in their JSON text."""

    def __init__(
        self, fixture: Path, ids: str = "random", head: bool = False, api_executions: bool = False
    ) -> None:
        docs = json_util.loads(fixture.read_text())
        if head:  # chunk 0 in the run row, as services/common/readmodels/projection.py does
            chunk = docs.pop("history")[0]
            docs["runs"][0]["history_head"] = {
                k: chunk[k] for k in ("first", "last", "count", "body")
            }
        commit = docs["commits"][0]
        run = docs["runs"][0]
        self.execution_id = run["execution_id"]
        self.run_id = run["run_id"]
        self.command_id = commit["command_id"]
        self.text = {name: json_util.dumps(docs[name][0]) for name in docs}
        self.tag = uuid.uuid4().hex[:6]
        self.n = 0
        self.ids = ids
        self.api_executions = api_executions

    def next(self) -> dict[str, dict[str, Any]]:
        self.n += 1
        execution_id = f"h-{self.tag}-{self.n}"
        if self.ids == "v7":  # as the API and the engine make them since the eleventh session
            command_id = new_id()
            run_id = derived_id(command_id, "run", time_of=command_id)
            if self.api_executions:
                execution_id = new_id()
        else:  # random (version 4), as before
            run_id, command_id = str(uuid.uuid4()), str(uuid.uuid4())
            if self.api_executions:
                execution_id = str(uuid.uuid4())
        out = {}
        for name, text in self.text.items():
            text = text.replace(self.run_id, run_id).replace(self.command_id, command_id)
            out[name] = json_util.loads(text.replace(self.execution_id, execution_id))
        return out


def start_server(
    binary: str, params: str, data_dir: Path, debug_addr: str = "", env: str = ""
) -> tuple[subprocess.Popen[bytes], str]:
    data_dir.mkdir(parents=True)
    cmd = [binary, "--addr=127.0.0.1:0", f"--data-dir={data_dir}", "--log-level=warn"]
    if debug_addr:
        cmd.append(f"--debug-addr={debug_addr}")
    if params:
        cmd.append(f"--sqlite-params={params}")
    log = (data_dir / "ferretdb.log").open("wb")
    extra = dict(kv.split("=", 1) for kv in env.split(",") if kv)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **extra})
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.match(r"mongodb://\S+", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"{binary} did not start: {line!r}")
    return proc, match.group(0)


def fetch_profile(debug_addr: str, out: Path) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://{debug_addr}/debug/pprof/profile?seconds=5") as reply:
        out.write_bytes(reply.read())


def run_variant(
    binary: str,
    params: str,
    starts: int,
    warmup: int,
    engine_batch: int,
    projector_batch: int,
    profile: Path | None = None,
    env: str = "",
    ids: str = "random",
    head: bool = False,
    api_executions: bool = False,
    read_models_db: str = "bench_readmodels",
) -> tuple[float, float, float]:
    """(FerretDB CPU ms per start, wall seconds, peak RSS MB) over `starts` after `warmup`; with
    `profile`, a 5-second Go CPU profile of the server from the measured part's start."""
    source = Starts(FIXTURE, ids, head, api_executions)
    rounds = (warmup + starts) // engine_batch
    batches = [[source.next() for _ in range(engine_batch)] for _ in range(rounds)]
    with tempfile.TemporaryDirectory(prefix="ferretdb-starts-") as tmp:
        debug_addr = f"127.0.0.1:{infra.free_port()}" if profile else ""
        proc, url = start_server(binary, params, Path(tmp) / "db", debug_addr, env)
        try:
            engine: MongoClient[dict[str, Any]] = MongoClient(url)
            projector: MongoClient[dict[str, Any]] = MongoClient(url)
            edb, pdb = engine["bench"], projector[read_models_db]
            edb["commits"].create_index("command_id", unique=True, name="command_id_unique")
            for name in ("runs", "executions", "history"):
                pdb.create_collection(name)
            time.sleep(0.5)  # the wrapper's `_id` index fix (idindex.go) runs every 200 ms
            measured_from = warmup // engine_batch
            marks: dict[str, float] = {}
            done = threading.Event()

            def project() -> None:
                pending: list[dict[str, dict[str, Any]]] = []
                i = 0
                while i < len(batches):
                    if i > ready[0]:
                        time.sleep(0.0005)
                        continue
                    pending.extend(batches[i])
                    i += 1
                    while len(pending) >= projector_batch or (i == len(batches) and pending):
                        part, pending[:] = pending[:projector_batch], pending[projector_batch:]
                        for name in ("history", "runs", "executions"):
                            if name in part[0]:
                                pdb[name].insert_many([s[name] for s in part], ordered=False)
                done.set()

            ready = [-1]
            thread = threading.Thread(target=project)
            thread.start()
            for i, batch in enumerate(batches):
                if i == measured_from:
                    marks["cpu"], marks["wall"] = cpu_seconds(proc.pid), time.perf_counter()
                    if profile:
                        threading.Thread(target=fetch_profile, args=(debug_addr, profile)).start()
                edb["commits"].insert_many([s["commits"] for s in batch], ordered=True)
                ready[0] = i
            done.wait()
            thread.join()
            used = cpu_seconds(proc.pid) - marks["cpu"]
            rss = peak_rss_mb(proc.pid)
            wall = time.perf_counter() - marks["wall"]
            measured = (len(batches) - measured_from) * engine_batch
            assert pdb["runs"].estimated_document_count() == len(batches) * engine_batch
            engine.close()
            projector.close()
        finally:
            proc.terminate()
            proc.wait(30)
    return used * 1000 / measured, wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=6000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine-batch", type=int, default=27)
    parser.add_argument("--projector-batch", type=int, default=37)
    parser.add_argument(
        "--ids",
        action="append",
        choices=("random", "v7"),
        help="random: version 4 run and command ids (before the eleventh session); v7: "
        "time-ordered ones, as services/common/ids.py makes them; repeat to alternate both "
        "with each variant (default: random)",
    )
    parser.add_argument(
        "--execution-ids",
        choices=("bench", "api"),
        default="bench",
        help="bench: h-<run>-<n>, as bench/http_gateway.py names them; api: made as the "
        "API makes an execution id the request does not give (of the --ids kind)",
    )
    parser.add_argument(
        "--read-models-db",
        default="bench_readmodels",
        help="the database of the projector's writes; the engine's is `bench`. Default: one "
        "of their own, as the services keep them since the sixteenth session; `bench` for "
        "the one database before",
    )
    parser.add_argument("--pprof", type=Path, help="save a CPU profile per run in this directory")
    parser.add_argument(
        "--layout",
        action="append",
        choices=("chunk", "head"),
        help="chunk: a history chunk per start (before the tenth session); head: chunk 0 in "
        "the run row; repeat to alternate both with each variant (default: chunk)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="name=[BINARY][;SQLITE_PARAMS] (default binary: this tree's build)",
    )
    args = parser.parse_args()
    variants: list[tuple[str, str, str, str, str, str]] = []
    layouts = args.layout or ["chunk"]
    id_kinds = args.ids or ["random"]
    for text in args.variant or ["this="]:
        name, _, rest = text.partition("=")
        binary, params, env = [*rest.split(";", 2), "", ""][:3]
        for layout in layouts:
            for kind in id_kinds:
                label = name + (f"/{layout}" if len(layouts) > 1 else "")
                label += f"/{kind}" if len(id_kinds) > 1 else ""
                built = binary or str(infra.install_ferretdb())
                variants.append((label, built, params, env, layout, kind))
    results: dict[str, list[str]] = {name: [] for name, *_ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, binary, params, env, layout, kind in order:
            head = layout == "head"
            load = os.getloadavg()[0]
            profile = args.pprof / f"{name}-{r + 1}.pprof" if args.pprof else None
            if args.pprof:
                args.pprof.mkdir(parents=True, exist_ok=True)
            ms, wall, rss = run_variant(
                binary,
                params,
                args.starts,
                args.warmup,
                args.engine_batch,
                args.projector_batch,
                profile,
                env,
                kind,
                head,
                args.execution_ids == "api",
                args.read_models_db,
            )
            cell = f"{ms:.3f} ms ({args.starts / wall:.0f} starts/s, {rss:.0f} MB, load {load:.1f})"
            results[name].append(cell)
            print(f"round {r + 1} {name}: {cell}", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
