"""A census of what HTTP starts ask of the Kafka broker: requests per start by client and
API key, records and bytes per start by topic, and the broker's CPU by thread.

    .venv/bin/python bench/broker_requests.py [--clients 32] [--seconds 10] [--warmup 5]
        [--env KEY=VALUE ...] [--no-log]

Starts the stack of bench/http_gateway.py (a fresh broker and FerretDB on free ports;
engine, projector and API as processes; `--env` adds settings to the services), then
turns the broker's request logger (`kafka.request.logger`) to DEBUG through Kafka's own
`ConfigCommand` (a broker logger changed at run time), runs the HTTP start phase, and
counts the "Completed request" lines whose time falls in the measured window. Records per
topic are end offsets read before and after the window; bytes are the growth of each
topic's log segments (batch headers and record overhead included, as stored). The
request logger costs the broker CPU of its own, so the CPU figures of a census run are
not the ones to compare: `--no-log` leaves it off (CPU only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import broker_threads as bt
import http_gateway as hg

API_KEYS = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    11: "JoinGroup",
    12: "Heartbeat",
    13: "LeaveGroup",
    14: "SyncGroup",
    18: "ApiVersions",
    19: "CreateTopics",
    22: "InitProducerId",
    32: "DescribeConfigs",
    44: "IncrementalAlterConfigs",
    60: "DescribeCluster",
    63: "BrokerHeartbeat",
}

_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] DEBUG Completed request:(\{.*\})")


def set_request_logging(bootstrap: str, level: str) -> None:
    """The broker's `kafka.request.logger` at `level`, through Kafka's ConfigCommand."""
    libs = hg.infra.install_kafka()
    subprocess.run(
        [
            hg.infra._java(),
            "-Xmx128m",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            f"{libs}/*",
            "kafka.admin.ConfigCommand",
            "--bootstrap-server",
            bootstrap,
            "--alter",
            "--entity-type",
            "broker-loggers",
            "--entity-name",
            "1",
            "--add-config",
            f"kafka.request.logger={level}",
        ],
        check=True,
        capture_output=True,
    )


def log_lines(log_dir: Path) -> Iterator[str]:
    """The broker log's lines, the rolled files (oldest first) then the current one."""
    rolled = sorted(log_dir.glob("kafka.log.*"), key=lambda p: -int(p.suffix[1:]))
    for path in [*rolled, log_dir / "kafka.log"]:
        with path.open(errors="replace") as lines:
            yield from lines


def stamp(at: float) -> str:
    """`at` (epoch seconds) as log4j's `%d` writes it (local time, milliseconds)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f",{int(at * 1000) % 1000:03d}"


def census(
    log_dir: Path, since: float, until: float
) -> tuple[Counter[tuple[str, str]], dict[tuple[str, str], Counter[str]]]:
    """Completed requests in [since, until] by (client id, API name), and some details
    of each kind (fetch waits and minimum bytes, partitions named)."""
    low, high = stamp(since), stamp(until)
    counts: Counter[tuple[str, str]] = Counter()
    details: dict[tuple[str, str], Counter[str]] = {}
    for line in log_lines(log_dir):
        m = _LINE.match(line)
        if m is None or not (low <= m.group(1) <= high):
            continue
        try:
            desc: dict[str, Any] = json.loads(m.group(2))
        except ValueError:
            continue
        header = desc.get("requestHeader", {})
        api = API_KEYS.get(header.get("requestApiKey"), str(header.get("requestApiKey")))
        key = (str(header.get("clientId")), api)
        counts[key] += 1
        seen = details.setdefault(key, Counter())
        request = desc.get("request") or {}
        if api == "Fetch":
            seen[f"maxWait {request.get('maxWaitMs')} minBytes {request.get('minBytes')}"] += 1
            named = sum(len(t.get("partitions", ())) for t in request.get("topics", ()))
            seen["partitions named"] += named
            seen["total ms"] += round(float(desc.get("totalTimeMs", 0)))
        elif api == "Produce":
            parts = sum(len(t.get("partitionData", ())) for t in request.get("topicData", ()))
            seen["partitions named"] += parts
        elif api == "OffsetCommit":
            named = sum(len(t.get("partitions", ())) for t in request.get("topics", ()))
            seen["partitions named"] += named
    return counts, details


def topic_partitions(log_dirs: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for d in log_dirs.iterdir():
        topic, sep, part = d.name.rpartition("-")
        if sep and part.isdigit() and d.is_dir() and topic != "__cluster_metadata":
            found.setdefault(topic, []).append(int(part))
    return found


def topic_bytes(log_dirs: Path) -> Counter[str]:
    sizes: Counter[str] = Counter()
    for topic, parts in topic_partitions(log_dirs).items():
        for p in parts:
            for seg in (log_dirs / f"{topic}-{p}").glob("*.log"):
                with contextlib.suppress(OSError):  # a segment deleted meanwhile
                    sizes[topic] += seg.stat().st_size
    return sizes


def end_offsets(bootstrap: str, log_dirs: Path) -> Counter[str]:
    """Sum of each topic's end offsets, read in a thread of its own (the caller's loop
    is busy with the load)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    out: Counter[str] = Counter()

    async def read() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t, ps in topic_partitions(log_dirs).items() for p in ps]
            for tp, offset in (await consumer.end_offsets(tps)).items():
                out[tp.topic] += offset
        finally:
            await consumer.stop()

    thread = threading.Thread(target=lambda: asyncio.run(read()))
    thread.start()
    thread.join()
    return out


def short(topic: str) -> str:
    return re.sub(r"^bench[0-9a-f]{8}\.", "", topic)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for services")
    parser.add_argument("--no-log", action="store_true", help="CPU only, no request census")
    parser.add_argument("--rate", type=float, default=0, help="starts per second (0: closed loop)")
    parser.add_argument(
        "--profile", metavar="SERVICE", help="py-spy the service over the window (raw stacks)"
    )
    args = parser.parse_args()
    extra = dict(pair.split("=", 1) for pair in args.env)
    with (
        tempfile.TemporaryDirectory(prefix="runstore-broker-requests-") as tmp,
        hg.runstore_stack(Path(tmp), extra_env=extra) as (url, pids),
    ):
        kafka_dir = Path(tmp) / "kafka"
        log_dirs = kafka_dir / "kraft-logs"
        bootstrap = re.search(
            r"^listeners=PLAINTEXT://([^,\s]+)",
            (kafka_dir / "server.properties").read_text(),
            re.MULTILINE,
        )
        assert bootstrap is not None
        address = bootstrap.group(1)
        names = bt.java_thread_names(pids["kafka"])
        if not args.no_log:
            set_request_logging(address, "DEBUG")
        window: dict[str, Any] = {}

        class Meter(bt.ThreadMeter):
            def begin(self) -> None:
                window["records"] = end_offsets(address, log_dirs)
                window["bytes"] = topic_bytes(log_dirs)
                window["since"] = time.time()
                if args.profile:
                    out = Path(f"/tmp/broker-requests-{args.profile}.txt")
                    window["spy"] = subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "-p",
                            str(pids[args.profile]),
                            "-d",
                            str(int(args.seconds)),
                            "-r",
                            "200",
                            "-f",
                            "raw",
                            "-o",
                            str(out),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                super().begin()

            def end(self) -> None:
                super().end()
                window["until"] = time.time()
                window["records"] = end_offsets(address, log_dirs) - window["records"]
                window["bytes"] = topic_bytes(log_dirs) - window["bytes"]
                window["threads"] = self.threads

        hg.CpuMeter = lambda pids: Meter(pids, names)  # type: ignore[assignment,misc,assignment]
        r = asyncio.run(
            hg.bench_runstore(url, args.clients, args.seconds, args.warmup, pids, args.rate)
        )
        if "spy" in window:
            window["spy"].wait()
        if not args.no_log:
            set_request_logging(address, "WARN")
        starts = r.starts
        if not starts:
            print("no start was counted (see the errors above): nothing to divide by")
            return 1
        print(
            f"{r.rate:.1f} starts/s ({starts} in {args.seconds:.0f} s), start p50 "
            f"{hg.pct(r.start_ms, 0.5):.1f} p99 {hg.pct(r.start_ms, 0.99):.1f} ms"
            + (" (request logger on: CPU and rate include its cost)" if not args.no_log else "")
        )
        print(f"ms of CPU per start: {bt.breakdown(r.cpu_seconds, starts)}")
        print(f"  kafka by thread: {bt.breakdown(window['threads'], starts)}")
        print("records and bytes per start by topic (as stored):")
        for topic in sorted(window["bytes"], key=lambda t: -window["bytes"][t]):
            recs, size = window["records"].get(topic, 0), window["bytes"][topic]
            if recs or size:
                print(
                    f"  {short(topic):28} {recs / starts:6.3f} records {size / starts:8.1f} B"
                    + (f"  ({size / recs:.0f} B/record)" if recs else "")
                )
        if args.no_log:
            return 0
        counts, details = census(kafka_dir, window["since"], window["until"])
        total = sum(counts.values())
        print(f"broker requests per start: {total / starts:.3f} ({total} requests)")
        for (client, api), n in sorted(counts.items(), key=lambda kv: -kv[1]):
            extra_info = ", ".join(
                f"{k} {v / n:.1f}" if k in ("partitions named", "total ms") else f"{k}: {v}"
                for k, v in sorted(details[(client, api)].items())
            )
            print(f"  {client:28} {api:16} {n / starts:6.3f}  ({n}; {extra_info})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
