"""CPU of the API's topic feed (services/api/topic_tail.py) per start, on a real broker.

    .venv/bin/python bench/api_feed_cpu.py [--starts 1000] [--tick-ms 10] [--seconds 10]
        [--compare-with /work/wt/other-checkout] [--pairs 2]

What the API's one consumer of outcomes and events does per HTTP start, alone: a producer
publishes, every `--tick-ms`, the records of `--starts` per second worth of starts as the
engine does (per start: its outcome on `workflows.outcomes` and its two events on
`workflows.events`, keyed by a fresh execution id, all of a tick in one produce request),
and a child process follows both topics with the checkout's `TopicFeed` (handlers that
only count records: decoding is measured by bench/api_workflow_cpu.py). Printed per run:
the child's CPU per start (user + system, from `resource`), its fetch requests per start
and per second, and the load average. With `--compare-with`, the runs alternate between
this checkout and the other one (A B B A …, `--pairs` pairs), each child importing its
own checkout's code; Kafka (deploy/local/infra.py, on free ports) is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

_OUTCOME = (
    b'{"command_id":"%s","command_type":"StartWorkflow","execution_id":"%s","accepted":true,'
    b'"seq":1,"run_id":"%s","status":"RUNNING","decided_at":"2026-12-06T10:00:00.000000Z"}'
)
_EVENT = (
    b'{"type":"%s","event_id":"%s:1:%d","execution_id":"%s","seq":1,"index":%d,'
    b'"event_number":%d,"run_id":"%s","workflow_name":"bench","root_execution_id":"%s",'
    b'"timestamp_ns":1765015200000000000,"command_id":"%s","attributes":{"input":{"n":1},'
    b'"deployment_name":null,"execution_timeout_seconds":null,"workflow_tags":null}}'
)


def _rusage_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def child(repo: Path, bootstrap: str, prefix: str) -> None:
    """Follows the topics with `repo`'s TopicFeed; on "go" notes its CPU, on "stop N"
    (N records published) waits for them and prints what it took."""
    sys.path.insert(0, str(repo))
    import uvloop  # noqa: F401  (the API runs on uvloop: run() below is uvloop's)
    from aiokafka import AIOKafkaClient

    from services.api.topic_tail import TopicFeed
    from services.common.settings import RunstoreSettings

    fetches = 0
    original_send = AIOKafkaClient.send

    async def counting_send(self: Any, node_id: int, request: Any, **kw: Any) -> Any:
        nonlocal fetches
        if request.API_KEY == 1:
            fetches += 1
        return await original_send(self, node_id, request, **kw)

    AIOKafkaClient.send = counting_send  # type: ignore[method-assign]
    settings = RunstoreSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    seen = 0

    def count(_partition: int, records: Any) -> None:
        nonlocal seen
        seen += len(records)

    feed = TopicFeed(settings, "bench-feed")
    feed.follow(settings.topics.outcomes, count)
    feed.follow(settings.topics.events, count)
    await feed.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    await reader.readline()  # go
    began_cpu, began_seen, began_fetches = _rusage_seconds(), seen, fetches
    began = time.monotonic()
    line = (await reader.readline()).split()
    expected = int(line[1])
    while seen - began_seen < expected:  # noqa: ASYNC110 (a counter the handlers move)
        await asyncio.sleep(0.01)
    cpu = _rusage_seconds() - began_cpu
    wall = time.monotonic() - began
    await feed.stop()
    print(
        json.dumps(
            {
                "cpu": cpu,
                "records": seen - began_seen,
                "fetches": fetches - began_fetches,
                "wall": wall,
            }
        ),
        flush=True,
    )


async def produce(
    bootstrap: str, prefix: str, starts_per_s: int, tick_ms: int, seconds: float
) -> int:
    """Publishes the starts' records at the pace asked; how many starts."""
    sys.path.insert(0, str(REPO))
    from aiokafka import AIOKafkaProducer

    from services.common.settings import RunstoreSettings

    topics = RunstoreSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix).topics
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    per_tick = max(1, round(starts_per_s * tick_ms / 1000))
    loop = asyncio.get_running_loop()
    started = loop.time()
    ticks = int(seconds * 1000 / tick_ms)
    try:
        for n in range(ticks):
            sends = []
            for _ in range(per_tick):
                execution = uuid.uuid4().hex.encode()
                run = uuid.uuid4().hex.encode()
                command = uuid.uuid4().hex.encode()
                key = execution
                sends.append(
                    await producer.send(
                        topics.outcomes, _OUTCOME % (command, execution, run), key=key
                    )
                )
                for index, kind in enumerate(
                    (b"WORKFLOW_EXECUTION_STARTED", b"WORKFLOW_TASK_SCHEDULED")
                ):
                    sends.append(
                        await producer.send(
                            topics.events,
                            _EVENT
                            % (
                                kind,
                                execution,
                                index,
                                execution,
                                index,
                                index + 1,
                                run,
                                execution,
                                command,
                            ),
                            key=key,
                        )
                    )
            await asyncio.gather(*sends)
            delay = started + (n + 1) * tick_ms / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        await producer.stop()
    return ticks * per_tick


def run_one(
    checkout: Path, bootstrap: str, prefix: str, args: argparse.Namespace
) -> dict[str, Any]:
    python = checkout / ".venv" / "bin" / "python"
    proc = subprocess.Popen(
        [str(python), str(Path(__file__).resolve()), "--child", str(checkout), bootstrap, prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the feed did not start")
    load = os.getloadavg()[0]
    proc.stdin.write("go\n")
    proc.stdin.flush()
    starts = asyncio.run(produce(bootstrap, prefix, args.starts, args.tick_ms, args.seconds))
    proc.stdin.write(f"stop {starts * 3}\n")
    proc.stdin.flush()
    result: dict[str, Any] = json.loads(proc.stdout.readline())
    proc.wait(timeout=30)
    result.update(starts=starts, load=load, checkout=str(checkout))
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import uvloop

        if profile := os.environ.get("API_FEED_PROFILE"):  # a cProfile of the child
            import cProfile

            cProfile.runctx(
                "uvloop.run(child(Path(sys.argv[2]), sys.argv[3], sys.argv[4]))",
                globals(),
                locals(),
                profile,
            )
        else:
            uvloop.run(child(Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=1000, help="starts per second")
    parser.add_argument("--tick-ms", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--compare-with", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "deploy" / "local"))
    sys.path.insert(0, str(REPO))
    import infra

    from services.common.kafka_topics import ensure_topics
    from services.common.settings import RunstoreSettings

    order = [REPO]
    if args.compare_with is not None:
        order = []
        for n in range(args.pairs):
            pair = [args.compare_with.resolve(), REPO]
            order += pair if n % 2 == 0 else pair[::-1]
    with tempfile.TemporaryDirectory(prefix="api-feed-bench-") as workdir:
        handle = infra.start_kafka(infra.free_port(), infra.free_port(), Path(workdir) / "kafka")
        try:
            prefix = f"f{uuid.uuid4().hex[:8]}."
            asyncio.run(
                ensure_topics(RunstoreSettings(kafka_bootstrap=handle.address, topic_prefix=prefix))
            )
            # A first run warms the broker (its JIT, the topics' segments) for all.
            run_one(
                REPO, handle.address, prefix, argparse.Namespace(**{**vars(args), "seconds": 3.0})
            )
            for checkout in order:
                r = run_one(checkout, handle.address, prefix, args)
                rate = r["starts"] / r["wall"]
                print(
                    f"{time.strftime('%H:%M:%S')} {r['checkout']}: {rate:.0f} starts/s, "
                    f"feed CPU {r['cpu'] / r['starts'] * 1e6:.1f} us per start, "
                    f"{r['fetches'] / r['starts']:.3f} fetches per start "
                    f"({r['fetches'] / r['wall']:.0f}/s), load {r['load']:.1f}",
                    flush=True,
                )
        finally:
            handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
