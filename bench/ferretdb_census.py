"""Which requests reach FerretDB per HTTP start, by client process, command and collection.

    .venv/bin/python bench/ferretdb_census.py [--clients 32] [--seconds 15] [--warmup 5]
        [--pprof SECONDS] [--no-proxy]

The HTTP start bench's Runstore row (bench/http_gateway.py: engine, projector and API as
processes, Kafka and FerretDB on free ports) with a counting proxy between the services
and FerretDB: every MongoDB wire message a service sends is counted by the process that
sent it (its connection's peer port, found in /proc/net/tcp and the service's open
sockets), its command and collection, and for writes the documents or statements it
carries. Printed per start over the measured window (after the warm-up): requests and
documents by (process, command, collection), FerretDB's CPU per start, and the rate.

The proxy runs in its own process and costs CPU of its own (the rate is lower than the
plain bench's, and batches sized by the rate change with it): the counts say what is sent,
the plain bench says what it costs. `--no-proxy` runs the same load without the proxy (for
FerretDB's CPU per start and a profile); `--pprof N` takes an N-second CPU profile of
FerretDB (Go's pprof on `--debug-addr`) starting with the measured window, saves it beside
the work directory and prints `go tool pprof -top` of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO / "bench"))

import infra  # noqa: E402
from cpu_meter import CpuMeter, tcp_port, tcp_sockets  # noqa: E402
from loadgen import HttpConnection, drive, pct  # noqa: E402

from services.common.settings import READ_MODELS_SUFFIX  # noqa: E402

OP_MSG = 2013
OP_QUERY = 2004

Key = tuple[int, str, str]  # peer port, command, collection


# --- the proxy (its own process: `ferretdb_census.py proxy UPSTREAM_PORT`) -----------------


def _describe(body: dict[str, Any], sequences: dict[str, int]) -> tuple[str, str, int]:
    """(command, collection, documents or statements) of one OP_MSG's body."""
    name = next(iter(body), "?")
    target = body.get(name)
    coll = target if isinstance(target, str) else ""
    if name in ("insert", "update", "delete"):
        field = {"insert": "documents", "update": "updates", "delete": "deletes"}[name]
        n = sequences.get(field, len(body.get(field, ())))
        return name, coll, n
    if name == "find":
        flt = body.get("filter") or {}
        if list(flt) == ["_id"] and not isinstance(flt["_id"], dict):
            name = "find _id"
        elif flt:
            name = "find " + ",".join(sorted(flt))
        return name, coll, 1
    return name, coll, 1


async def _pipe_counting(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counts: dict[Key, list[float]],
    port: int,
) -> None:
    import bson

    try:
        while True:
            head = await reader.readexactly(16)
            length, _req, _to, opcode = struct.unpack("<iiii", head)
            rest = await reader.readexactly(length - 16)
            writer.write(head + rest)
            if opcode == OP_MSG:
                flags = struct.unpack_from("<I", rest, 0)[0]
                stop = len(rest) - (4 if flags & 1 else 0)  # checksumPresent
                pos, body, seqs = 4, {}, {}
                while pos < stop:
                    kind = rest[pos]
                    pos += 1
                    size = struct.unpack_from("<i", rest, pos)[0]
                    if kind == 0:
                        body = bson.decode(rest[pos : pos + size])
                    else:
                        end = rest.index(b"\0", pos + 4)
                        ident = rest[pos + 4 : end].decode()
                        n, at = 0, end + 1
                        while at < pos + size:
                            at += struct.unpack_from("<i", rest, at)[0]
                            n += 1
                        seqs[ident] = n
                    pos += size
                cmd, coll, n = _describe(body, seqs)
            else:
                cmd, coll, n = f"opcode {opcode}", "", 1
            entry = counts[(port, cmd, coll)]
            entry[0] += 1
            entry[1] += n
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _proxy(upstream_port: int) -> None:
    counts: dict[Key, list[float]] = defaultdict(lambda: [0.0, 0.0])

    async def serve(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        port = cw.get_extra_info("peername")[1]
        sr, sw = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(
            _pipe_counting(cr, sw, counts, port), _pipe_replies(sr, cw), return_exceptions=True
        )

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := await stdin.readline():
        if line.strip() == b"snap":
            rows = [[p, c, k, v[0], v[1]] for (p, c, k), v in counts.items()]
            print(json.dumps(rows), flush=True)


async def _pipe_replies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
    except ConnectionError:
        pass
    finally:
        writer.close()


# --- attributing connections to processes --------------------------------------------


def _socket_inodes(port: int) -> dict[int, int]:
    """Client port -> socket inode of every TCP connection to `port` on this host."""
    return {tcp_port(f[1]): int(f[9]) for f in tcp_sockets() if tcp_port(f[2]) == port}


def _owners(pids: dict[str, int]) -> dict[int, str]:
    """Socket inode -> the name of the process (or its descendant) holding it."""
    from cpu_meter import _children

    tree = _children()
    owners: dict[int, str] = {}
    for name, pid in pids.items():
        todo = [pid]
        while todo:
            current = todo.pop()
            todo.extend(tree.get(current, ()))
            try:
                fds = list(Path(f"/proc/{current}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = name
    return owners


class Census:
    def __init__(self, upstream_port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "proxy", str(upstream_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.lock = threading.Lock()

    def snap(self) -> dict[Key, tuple[float, float]]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write("snap\n")
            self.proc.stdin.flush()
            rows = json.loads(self.proc.stdout.readline())
        return {(p, c, k): (n, d) for p, c, k, n, d in rows}

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class WindowMeter(CpuMeter):
    """The CPU meter of `drive`, also taking the proxy's counts at the window's ends."""

    def __init__(self, pids: dict[str, int], census: Census | None, on_begin: Any) -> None:
        super().__init__(pids)
        self.census = census
        self.on_begin = on_begin
        self.first: dict[Key, tuple[float, float]] = {}
        self.last: dict[Key, tuple[float, float]] = {}

    def begin(self) -> None:
        if self.census:
            self.first = self.census.snap()
        self.on_begin()
        super().begin()

    def end(self) -> None:
        super().end()
        if self.census:
            self.last = self.census.snap()


async def _load(url: str, clients: int, seconds: float, warmup: float, meter: WindowMeter) -> Any:
    from http_gateway import KEY

    host, port = url.removeprefix("http://").split(":")
    conns = [HttpConnection(host, int(port), KEY) for _ in range(clients)]
    run = uuid.uuid4().hex[:6]
    counter = iter(range(10**9))

    async def start(worker: int) -> str:
        execution_id = f"c-{run}-{next(counter)}"
        body = json.dumps(
            {"execution_id": execution_id, "input": {"n": 1}, "wait_for_result": False}
        ).encode()
        status, payload = await conns[worker].request("POST", "/v1/workflows/bench/execute", body)
        if status != 200:
            raise RuntimeError(f"execute answered {status}: {payload[:200]!r}")
        return execution_id

    try:
        return await drive("census", clients, seconds, warmup, start, None, meter)
    finally:
        for conn in conns:
            conn.close()


def dump_one_start(mongo_url: str, out: Path) -> None:
    """The documents of one started execution, by collection (extended JSON): what
    bench/ferretdb_starts.py replays."""
    from bson import json_util
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    try:
        name = next(
            n
            for n in client.list_database_names()
            if n.startswith("bench_") and not n.endswith(READ_MODELS_SUFFIX)
        )
        db, models = client[name], client[name + READ_MODELS_SUFFIX]
        run = models["runs"].find_one({})
        assert run is not None
        execution_id = run["execution_id"]
        docs = {
            "commits": list(db["commits"].find({"_id": f"{execution_id}:{1:012d}"})),
            "runs": [run],
            "executions": list(models["executions"].find({"_id": execution_id})),
            "history": list(models["history"].find({"run_id": run["run_id"]})),
        }
        out.write_text(json_util.dumps(docs, indent=1))
    finally:
        client.close()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "proxy":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_proxy(int(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--no-proxy", action="store_true", help="no counting proxy")
    parser.add_argument("--pprof", type=float, default=0, help="seconds of FerretDB CPU profile")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--dump", type=Path, help="write the documents one start left in each collection here"
    )
    args = parser.parse_args()

    from http_gateway import runstore_stack

    workdir = Path(tempfile.mkdtemp(prefix="ferretdb-census-"))
    debug_port = infra.free_port()
    os.environ["RUNSTORE_FERRETDB_DEBUG_ADDR"] = f"127.0.0.1:{debug_port}"
    kafka = infra.start_kafka(infra.free_port(), infra.free_port(), workdir / "kafka")
    ferret = infra.start_ferretdb(infra.free_port(), workdir / "ferretdb")
    census: Census | None = None
    try:
        mongo_port = int(ferret.address.rstrip("/").rsplit(":", 1)[1])
        mongo_url = ferret.address
        if not args.no_proxy:
            census = Census(mongo_port)
            mongo_url = f"mongodb://127.0.0.1:{census.port}/"
        os.environ["RUNSTORE_KAFKA_BOOTSTRAP"] = kafka.address
        os.environ["RUNSTORE_MONGO_URL"] = mongo_url
        profile = workdir / "ferretdb.cpu.pprof"
        profiler: list[threading.Thread] = []

        def take_profile() -> None:
            if not args.pprof:
                return
            src = f"http://127.0.0.1:{debug_port}/debug/pprof/profile?seconds={args.pprof:.0f}"

            def fetch() -> None:
                with urllib.request.urlopen(src, timeout=args.pprof + 30) as reply:
                    profile.write_bytes(reply.read())

            profiler.append(threading.Thread(target=fetch, daemon=True))
            profiler[-1].start()

        with runstore_stack(workdir) as (url, pids):
            pids = {k: v for k, v in pids.items() if k not in ("kafka", "mongo")}
            meter = WindowMeter(
                {**pids, "ferretdb": ferret.pid, "kafka": kafka.pid}, census, take_profile
            )
            result = asyncio.run(_load(url, args.clients, args.seconds, args.warmup, meter))
            owners = _owners(pids) if census else {}
            inodes = _socket_inodes(census.port) if census else {}
            if args.dump:
                dump_one_start(ferret.address, args.dump)
        for thread in profiler:
            thread.join()
    finally:
        if census:
            census.close()
        ferret.stop()
        kafka.stop()

    starts = result.starts
    print(
        f"{starts / args.seconds:.0f} starts/s over {args.seconds:.0f} s, p50 "
        f"{pct(result.start_ms, 0.5):.1f} ms, p99 {pct(result.start_ms, 0.99):.1f} ms, "
        f"{result.errors} errors, load {os.getloadavg()[0]:.1f}"
    )
    used = result.cpu_seconds or {}
    print("CPU ms per start: " + ", ".join(f"{k} {v * 1000 / starts:.3f}" for k, v in used.items()))
    if census:
        table: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for key, (n, d) in meter.last.items():
            n0, d0 = meter.first.get(key, (0.0, 0.0))
            port, cmd, coll = key
            who = owners.get(inodes.get(port, -1), "?")
            row = table[(who, cmd, coll)]
            row[0] += n - n0
            row[1] += d - d0
        total = sum(r[0] for r in table.values())
        print(f"\nrequests to FerretDB per start: {total / starts:.3f}")
        print(f"{'process':10} {'command':24} {'collection':22} {'req/start':>9} {'docs/req':>8}")
        for (who, cmd, coll), (n, d) in sorted(table.items(), key=lambda kv: -kv[1][0]):
            if n:
                print(f"{who:10} {cmd:24} {coll:22} {n / starts:9.3f} {d / n:8.1f}")
    if args.pprof and profile.exists():
        out = Path.cwd() / f"ferretdb-{int(time.time())}.pprof"
        shutil.copyfile(profile, out)
        print(f"\nprofile: {out}")
        go = shutil.which("go") or "/usr/local/go/bin/go"
        top = subprocess.run(
            [go, "tool", "pprof", "-top", "-nodecount=45", str(out)], capture_output=True, text=True
        )
        print(top.stdout or top.stderr)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
