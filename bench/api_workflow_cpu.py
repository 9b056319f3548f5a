"""CPU per waited workflow inside the API process, without sockets, Kafka or a database.

    .venv/bin/python bench/api_workflow_cpu.py [--clients 32] [--workflows 2000] [--rounds 5]
    .venv/bin/python bench/api_workflow_cpu.py --no-wait     # bare starts (the HTTP bench)
    .venv/bin/python bench/api_workflow_cpu.py --no-wait --starts-only

What `bench/workers.py` asks of the API, per workflow, with everything but the broker and
the sockets real: the app as `runstore api` builds it behind uvicorn's HTTP protocol (one
per client connection, fake transports), fed the execute with `wait_for_result` that
bench/workers.py sends; the command gateway and its command window (`command_window.py`)
with a producer that acknowledges every batch at once; the outcome and event handlers of
the API's `TopicFeed` (the gateway's waiters, the event fan-out, the run list index's
follower) fed the records one one-activity workflow makes, as recorded from a real stack
(bench/fixtures/one_activity_workflow.json, `bench/record_workflow_records.py`), with
each workflow's ids. A fake engine answers each window's commands one loop turn after the
window is acknowledged, in one feed delivery per partition like an engine batch (the
start's outcome and STARTED event), and the worker's part one turn later (four events and
the second outcome).

`--starts-only`: the fake engine answers with the start's records only (its outcome and
STARTED event), as the stack of `bench/http_gateway.py` does, where no worker runs.

`--direct`: the start's answer comes first as a direct reply frame, handed to the API's
reply listener's connection (trusted; tagged, with the run's STARTED event before the
outcome, when the checkout's gateway asks for STARTED events), and its records from the
topics one loop turn later, as the stack's engine writes the reply before it publishes.

Printed: the lowest CPU time per workflow over `--rounds` rounds (process CPU: the fake
engine and the clients are in it, the same in any two checkouts). Not in it: aiokafka's
fetch and produce requests and responses, the socket system calls. Compare two checkouts
by running each one's copy of this file, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import uvloop  # noqa: E402
from aiokafka.producer.message_accumulator import BatchBuilder  # noqa: E402
from aiokafka.structs import ConsumerRecord  # noqa: E402
from api_execute_cpu import Transport, uvicorn_protocol  # noqa: E402
from cpu_meter import CollectorPasses  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from services.api import list_index_feed as list_index_feed_module  # noqa: E402
from services.api.app import build_app  # noqa: E402
from services.api.command_window import WindowedPublisher  # noqa: E402
from services.common.ids import new_id  # noqa: E402
from services.common.memory_catalogue import MemoryCatalogue  # noqa: E402
from services.common.runtime import tune_gc  # noqa: E402
from services.common.settings import ApiSettings  # noqa: E402

FIXTURE = REPO / "bench" / "fixtures" / "one_activity_workflow.json"
PARTITIONS = 12
_COMMAND_ID = re.compile(rb'"command_id":"([^"]+)"')
_TIMESTAMP = re.compile(rb'"timestamp_ns":(\d+)')
_RECORDED_TIMES: set[bytes] = set()


class FakeEngine:
    """Answers commands with the recorded workflow's records, through the feed handlers."""

    def __init__(
        self, feed: Any, settings: ApiSettings, starts_only: bool = False, direct: Any = None
    ) -> None:
        """`direct`: the API's gateway, to answer through its reply listener first."""
        self._starts_only = starts_only
        self._direct = direct
        self._connection: Any = None
        self._times: dict[bytes, bytes] = {}
        """Execution id -> the time its reply's records carry: its topic records the same
        (the engine sends the topic's bytes)."""
        recorded = json.loads(FIXTURE.read_text())
        self._ids = (
            recorded["execution_id"].encode(),
            recorded["run_id"].encode(),
            recorded["start_command_id"].encode(),
        )
        self._start: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
        self._worker: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
        # Each workflow's events carry the time they are delivered (the index sorts by it).
        for r in recorded["records"]:
            headers = [(k, v.encode()) for k, v in r["headers"]]
            item = (r["topic"], r["value"].encode(), headers)
            _RECORDED_TIMES.update(_TIMESTAMP.findall(item[1]))
            (self._start if b'"seq":1,' in item[1] else self._worker).append(item)
        self._topics = {
            "workflows.outcomes": settings.topics.outcomes,
            "workflows.events": settings.topics.events,
        }
        self._handlers = {topic: f.on_records for topic, f in feed._followers.items()}
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)
        self.commands: list[tuple[bytes, bytes]] = []

    def take(self, builder: BatchBuilder) -> None:
        """Note the commands of a batch handed to the producer (they came to it in
        `self.commands`, by `RecordingPublisher`), and answer them after a loop turn."""
        commands, self.commands = self.commands, []
        if commands:
            asyncio.get_running_loop().call_soon(self._decide, commands)

    def _decide(self, commands: list[tuple[bytes, bytes]]) -> None:
        runs = [(execution_id, new_id().encode(), cid) for execution_id, cid in commands]
        if self._direct is not None:
            self._reply(runs)
            asyncio.get_running_loop().call_soon(self._deliver, runs, self._start)
        else:
            self._deliver(runs, self._start)
        if not self._starts_only:
            asyncio.get_running_loop().call_soon(self._deliver, runs, self._worker)

    def _reply(self, runs: list[tuple[bytes, bytes, bytes]]) -> None:
        """The direct reply frame of these starts, into the listener's connection."""
        from services.api import reply_listener
        from services.common.reply_frames import frame

        gateway = self._direct
        tagged = bool(getattr(gateway, "_asks_started", False))
        if self._connection is None:
            self._connection = reply_listener._ReplyConnection(gateway.replies)
            self._connection._trusted = True
            self._connection._tagged = tagged
        values: list[bytes] = []
        for _, value, topic in self._values(runs, self._start):
            if topic == "workflows.outcomes":
                values.append(b"\x00" + value if tagged else value)
            elif tagged and b'"WORKFLOW_EXECUTION_STARTED"' in value:
                values.append(b"\x01" + value)
        self._connection.data_received(frame(values))

    def _values(
        self,
        runs: list[tuple[bytes, bytes, bytes]],
        templates: list[tuple[str, bytes, list[tuple[str, bytes]]]],
    ) -> list[tuple[bytes, bytes, str]]:
        """(execution id, record value, recorded topic) of each run's records."""
        out: list[tuple[bytes, bytes, str]] = []
        for execution_id, run_id, command_id in runs:
            now = self._times[execution_id] = b"%d" % time.time_ns()
            for topic, value, _ in templates:
                value = self._stamped(value, (execution_id, run_id, command_id), now)
                out.append((execution_id, value, topic))
        return out

    def _stamped(self, value: bytes, ids: tuple[bytes, bytes, bytes], now: bytes) -> bytes:
        """A recorded record's value with this run's ids and `now` for its recorded times."""
        for old, new in zip(self._ids, ids, strict=True):
            value = value.replace(old, new)
        for recorded_time in _RECORDED_TIMES:
            value = value.replace(recorded_time, now)
        return value

    def _deliver(
        self,
        runs: list[tuple[bytes, bytes, bytes]],
        templates: list[tuple[str, bytes, list[tuple[str, bytes]]]],
    ) -> None:
        by_tp: dict[tuple[str, int], list[Any]] = defaultdict(list)
        times = self._times
        for execution_id, run_id, command_id in runs:
            partition = hash(execution_id) % PARTITIONS
            now = times.pop(execution_id, None) or b"%d" % time.time_ns()
            for topic, value, headers in templates:
                value = self._stamped(value, (execution_id, run_id, command_id), now)
                tp = (self._topics[topic], partition)
                offset = self._offsets[tp]
                self._offsets[tp] = offset + 1
                by_tp[tp].append(
                    ConsumerRecord(
                        tp[0], partition, offset, 0, 0, execution_id, value, None, 0, 0, headers
                    )
                )
        # Outcomes first, as one fetch hands them over (topic_tail.TopicFeed).
        for (topic, partition), records in sorted(by_tp.items(), key=lambda i: i[0][0]):
            self._handlers[topic](partition, records)


class FakeProducer:
    """What the command window uses of aiokafka's producer; acknowledges at once."""

    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(1 << 20, 0)

    async def send_batch(self, builder: BatchBuilder, topic: str, *, partition: int) -> Any:
        self._engine.take(builder)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    async def stop(self) -> None:
        pass


class RecordingPublisher(WindowedPublisher):
    """The real command window; tells the fake engine which commands it published."""

    engine: FakeEngine

    async def publish(self, records: Any, within_seconds: float | None = None) -> None:
        for record in records:
            found = _COMMAND_ID.search(record.value)
            assert found is not None
            self.engine.commands.append((record.key.encode(), found.group(1)))
        await super().publish(records, within_seconds)


def execute_request(wait: bool) -> bytes:
    """What bench/workers.py (or, without `wait`, bench/http_gateway.py) sends."""
    if wait:
        body = json.dumps({"input": {"n": 1}, "wait_for_result": True, "timeout_seconds": 30})
    else:
        body = json.dumps({"input": {"n": 1}, "wait_for_result": False})
    head = (
        "POST /v1/workflows/bench-one-activity/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Authorization: Bearer bench-key\r\nAccept: application/json\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body.encode()


async def _no_offsets(*_: Any) -> dict[int, int]:
    return {}


async def _no_runs(*_: Any, **__: Any) -> int:
    return 0


async def measure(
    clients: int,
    workflows: int,
    rounds: int,
    wait: bool,
    count_calls: bool = False,
    starts_only: bool = False,
    direct: bool = False,
) -> tuple[float, float]:
    """(CPU seconds per workflow, of which in the garbage collector); with `count_calls`,
    (Python and C function calls per workflow, 0) over one round instead."""
    settings = ApiSettings(api_allow_unregistered=True, api_keys="bench-key=bench")
    app = build_app(settings)
    tune_gc()  # as `runstore api` does once the app is built
    wiring = app.state.wiring
    object.__setattr__(wiring, "catalogue", MemoryCatalogue())
    gateway = app.state.gateway
    fanout = app.state.fanout
    feed = fanout._feed
    engine = FakeEngine(feed, settings, starts_only, gateway if direct else None)
    publisher = RecordingPublisher(
        settings, "bench", settings.api_publish_linger_ms, settings.api_publish_quiet_ms
    )
    publisher.engine = engine
    publisher._producer = FakeProducer(engine)  # type: ignore[assignment]
    publisher._last = asyncio.get_running_loop().time()
    gateway._publisher = publisher
    await fanout.start()
    # The run list index follows the fan-out from an empty store (no bootstrap reads).
    list_index_feed_module.committed_offsets = _no_offsets  # type: ignore[assignment]
    list_index_feed_module.load_runs = _no_runs  # type: ignore[assignment]
    index_feed = app.state.list_index_feed

    async def caught_up(_: dict[int, int]) -> None:
        index_feed._subscribe()
        index_feed._fold_next = {}
        index_feed._index.ready = True

    index_feed._read_on_its_own = caught_up
    index_feed._task = asyncio.create_task(index_feed._run())

    config, protocol_class = uvicorn_protocol(app)
    request = execute_request(wait)
    state = ServerState()

    async def client(count: int) -> None:
        protocol = protocol_class(config=config, server_state=state, app_state={})
        transport = Transport()
        protocol.connection_made(transport)
        for _ in range(count):
            transport.written.clear()
            transport.answered.clear()
            protocol.data_received(request)
            await transport.answered.wait()
            if not transport.written.startswith(b"HTTP/1.1 200 OK"):
                raise RuntimeError(f"the execute failed: {bytes(transport.written[:300])!r}")
            if wait and b'"status":"COMPLETED"' not in transport.written:
                raise RuntimeError(f"not completed: {bytes(transport.written[:600])!r}")

    per_client = max(1, workflows // clients)
    await asyncio.gather(*(client(max(1, 500 // clients)) for _ in range(clients)))  # warm-up
    if count_calls:
        calls = Calls()
        sys.setprofile(calls.note)
        await asyncio.gather(*(client(per_client) for _ in range(clients)))
        sys.setprofile(None)
        index_feed._task.cancel()
        return calls.count / (per_client * clients), 0.0
    collecting = CollectorPasses()
    best = (float("inf"), 0.0)
    for _ in range(rounds):
        collecting.cpu_seconds = 0.0
        started = time.process_time()
        await asyncio.gather(*(client(per_client) for _ in range(clients)))
        done = per_client * clients
        best = min(best, ((time.process_time() - started) / done, collecting.cpu_seconds / done))
    collecting.stop()
    index_feed._task.cancel()
    return best


class Calls:
    """Function calls (Python and C; a coroutine's resumption counts as a call), a count
    that the box's load does not blur, unlike CPU time."""

    def __init__(self) -> None:
        self.count = 0

    def note(self, _frame: Any, event: str, _arg: Any) -> None:
        if event in ("call", "c_call"):
            self.count += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-wait", action="store_true", help="bare starts, no wait_for_result")
    parser.add_argument(
        "--calls", action="store_true", help="count function calls per workflow instead"
    )
    parser.add_argument(
        "--starts-only",
        action="store_true",
        help="with --no-wait: the start's records only (no worker's), as the HTTP bench's stack",
    )
    parser.add_argument(
        "--direct", action="store_true", help="answer by a direct reply frame, then the topics"
    )
    args = parser.parse_args()
    if args.starts_only and not args.no_wait:
        parser.error("--starts-only needs --no-wait (a waited workflow needs the worker's part)")
    logging.disable(logging.WARNING)  # the page-token secret warning of build_app
    what = "start" if args.no_wait else "waited workflow"
    if args.calls:
        calls, _ = uvloop.run(
            measure(
                args.clients,
                args.workflows,
                1,
                not args.no_wait,
                count_calls=True,
                starts_only=args.starts_only,
                direct=args.direct,
            )
        )
        print(f"{REPO}: {calls:.1f} function calls per {what} (Python and C)")
        return 0
    best, in_gc = uvloop.run(
        measure(
            args.clients,
            args.workflows,
            args.rounds,
            not args.no_wait,
            starts_only=args.starts_only,
            direct=args.direct,
        )
    )
    rounds = f"lowest of {args.rounds} x {args.workflows}, {args.clients} clients"
    print(
        f"{REPO}: {best * 1e6:.1f} us of CPU per {what}, of which {in_gc * 1e6:.1f} in the "
        f"garbage collector ({rounds})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
