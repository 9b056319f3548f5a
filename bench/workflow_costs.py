"""What one one-activity workflow costs, counted: Kafka records per topic and MongoDB
commands per service (the workflow of bench/workers.py, run through HTTP execute with
`wait_for_result`).

    .venv/bin/python bench/workflow_costs.py [--workflows 300] [--clients 8]

Each service reaches the MongoDB-protocol server through its own counting proxy (a TCP
relay that reads the OP_MSG commands going to the server), so every `find`, `insert`,
`update` … is attributed to the process that sent it; a write's documents are counted too
(the statements of an `update`, the documents of an `insert`). Kafka records are the
topics' end offsets after minus before (`__consumer_offsets` included: offset commits).
Printed per completed workflow. Counts, not timings: they do not depend on the box's load
(bar batching: busier services put more records in one write, and a count of commands
can fall with load; --clients sets the load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import bson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO / "bench"))

import infra  # noqa: E402
from loadgen import HttpConnection  # noqa: E402
from peers.procs import process  # noqa: E402
from servers import bench_servers  # noqa: E402

KEY = "bench-key"
SERVICES: tuple[tuple[str, ...], ...] = (
    ("engine",),
    ("projector",),
    ("worker", "--module", "bench_workflows"),
    ("timers",),
    ("api",),
)
_QUIET = {"hello", "ismaster", "isMaster", "ping", "buildInfo", "endSessions", "saslStart"}
_OP_MSG = 2013


class MongoCounter:
    """A relay to the server that counts the commands one service sends."""

    def __init__(self, name: str, upstream: tuple[str, int]) -> None:
        self.name = name
        self.upstream = upstream
        self.commands: Counter[str] = Counter()
        self.documents: Counter[str] = Counter()
        self.counting = False

    async def serve(self) -> int:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self._server = server
        return int(server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pipe_up() -> None:
            try:
                while True:
                    header = await reader.readexactly(16)
                    length, _, _, opcode = struct.unpack("<iiii", header)
                    body = await reader.readexactly(length - 16)
                    if opcode == _OP_MSG and self.counting:
                        self._count(body)
                    up_writer.write(header + body)
                    await up_writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                up_writer.close()

        async def pipe_down() -> None:
            try:
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        # The run is over when this is cancelled: the relay stops with the event loop.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe_up(), pipe_down())

    def _count(self, body: bytes) -> None:
        pos = 4  # flagBits
        command = ""
        docs = 0
        while pos < len(body):
            kind = body[pos]
            pos += 1
            size = struct.unpack_from("<i", body, pos)[0]
            if kind == 0:
                doc = bson.decode(body[pos : pos + size])
                name = next(iter(doc))
                command = f"{name} {doc[name]}" if isinstance(doc[name], str) else name
                for field in ("documents", "updates", "deletes"):
                    if isinstance(doc.get(field), list):
                        docs += len(doc[field])
                pos += size
            elif kind == 1:
                end = pos + size
                pos += 4
                pos = body.index(b"\0", pos) + 1  # the sequence's identifier
                while pos < end:
                    docs += 1
                    pos += struct.unpack_from("<i", body, pos)[0]
            else:
                break
        name = command.split(" ")[0]
        if name in _QUIET or not command:
            return
        self.commands[command] += 1
        self.documents[command] += docs


def kafka_requests(kafka_port: int, pids: dict[int, str]) -> Counter[str]:
    """Data segments each service sent to the broker so far, from `ss` (its long-lived
    connections' `data_segs_out`): on loopback one request is one segment, so this
    counts Kafka requests (produce, fetch, offset commit, heartbeat …) per process."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
    sent: Counter[str] = Counter()
    owner: str | None = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            fields = line.split()
            owner = None
            if len(fields) >= 5 and fields[4].endswith(f":{kafka_port}"):
                found = re.search(r"pid=(\d+)", line)
                owner = pids.get(int(found.group(1))) if found else None
        elif owner is not None and (segs := re.search(r"data_segs_out:(\d+)", line)):
            sent[owner] += int(segs.group(1))
    return sent


async def end_offsets(bootstrap: str, prefix: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        names.append("__consumer_offsets")
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    tps = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        totals: Counter[str] = Counter()
        for tp, end in (await consumer.end_offsets(tps)).items():
            totals[tp.topic.removeprefix(prefix)] += end
        return dict(totals)
    finally:
        await consumer.stop()


async def run(args: argparse.Namespace, work: Path) -> None:
    services = [s for s in SERVICES if not (args.no_timers and s[0] == "timers")]
    with ExitStack() as stack:
        kafka, mongo, _ = stack.enter_context(bench_servers(work))
        parts = urlsplit(mongo)
        counters = {
            s[0]: MongoCounter(s[0], (parts.hostname or "127.0.0.1", parts.port or 27017))
            for s in services
        }
        ports = {name: await c.serve() for name, c in counters.items()}
        tag = uuid.uuid4().hex[:8]
        prefix = f"cost{tag}."
        api_port = infra.free_port()
        base_env = {
            "PYTHONPATH": f"{REPO}:{REPO / 'bench'}",
            "RUNSTORE_KAFKA_BOOTSTRAP": kafka,
            "RUNSTORE_MONGO_DATABASE": f"cost_{tag}",
            "RUNSTORE_TOPIC_PREFIX": prefix,
            "RUNSTORE_API_KEYS": f"{KEY}=bench",
            "RUNSTORE_API_ALLOW_UNREGISTERED": "true",
            "RUNSTORE_API_PORT": str(api_port),
            "RUNSTORE_LOG_LEVEL": "WARNING",
        }
        procs: list[subprocess.Popen[bytes]] = []
        for service in services:
            mongo_url = f"mongodb://127.0.0.1:{ports[service[0]]}/"
            command = [sys.executable, "-m", "services.cli", *service]
            log = work / f"{service[0]}.log"
            env = {**base_env, "RUNSTORE_MONGO_URL": mongo_url}
            procs.append(stack.enter_context(process(command, log, env)))
        conns = [HttpConnection("127.0.0.1", api_port, KEY) for _ in range(args.clients)]
        counter = iter(range(10**9))

        async def one(client: int) -> None:
            n = next(counter)
            body = json.dumps({"input": {"n": n}, "wait_for_result": True, "timeout_seconds": 30})
            status, payload = await conns[client].request(
                "POST", "/v1/workflows/bench-one-activity/execute", body.encode()
            )
            if status != 200 or json.loads(payload).get("result") != n + 1:
                raise RuntimeError(f"{status}: {payload[:200]!r}")

        deadline = time.monotonic() + 120
        while True:  # the worker joins its group: not counted
            try:
                await one(0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                conns[0] = HttpConnection("127.0.0.1", api_port, KEY)
                await asyncio.sleep(0.5)
        for _ in range(20):
            await asyncio.gather(*(one(c) for c in range(args.clients)))
        await asyncio.sleep(2)  # the warm-up's trailing writes (offset commits …)
        kafka_port = int(kafka.rsplit(":", 1)[1])
        names = {proc.pid: service[0] for proc, service in zip(procs, services, strict=True)}
        before = await end_offsets(kafka, prefix)
        requests_before = kafka_requests(kafka_port, names)
        for c in counters.values():
            c.counting = True
        todo = iter(range(args.workflows))

        async def loop(client: int) -> None:
            for _ in todo:
                await one(client)

        began = time.monotonic()
        await asyncio.gather(*(loop(c) for c in range(args.clients)))
        rate = args.workflows / (time.monotonic() - began)
        await asyncio.sleep(2)  # the projector and offset commits catch up
        for c in counters.values():
            c.counting = False
        after = await end_offsets(kafka, prefix)
        requests = kafka_requests(kafka_port, names)
        requests.subtract(requests_before)
        n = args.workflows
        print(
            f"\nper workflow ({n} workflows, {args.clients} clients, {rate:.0f} workflows/s:"
            " requests per workflow fall as batches grow with the rate)\n\nKafka records:"
        )
        for topic in sorted(after):
            delta = after[topic] - before.get(topic, 0)
            if delta:
                print(f"  {topic:40} {delta / n:7.2f}")
        print("\nKafka requests sent (idle polls and heartbeats included):")
        for name, count in requests.items():
            print(f"  {name:40} {count / n:7.2f}")
        print(f"  {'all':40} {sum(requests.values()) / n:7.2f}")
        print("\nMongoDB commands (documents):")
        for name, c in counters.items():
            total = sum(c.commands.values())
            print(f"  {name}: {total / n:.2f}")
            for command, count in c.commands.most_common():
                print(f"    {command:48} {count / n:7.2f}  ({c.documents[command] / n:.2f} docs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workflows", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-timers", action="store_true", help="leave the timers service out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runstore-costs-") as tmp:
        asyncio.run(run(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
