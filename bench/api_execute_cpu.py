"""CPU per HTTP execute inside the API process, without sockets, Kafka or a database.

    .venv/bin/python bench/api_execute_cpu.py [--requests 3000] [--rounds 5]

The API's app as `runstore api` builds it (`build_app`: every middleware, the execute fast
path) behind uvicorn's HTTP protocol (httptools, with the request-read deadlines), fed the
bytes of the execute `bench/http_gateway.py` sends over a fake transport, one request at a
time, on uvloop. The command gateway answers like the engine (an accepted start) after one
turn of the event loop, and the catalogue is in memory. What is left is the API's own
per-request work: HTTP parsing and rendering, the middlewares, the handler (validation,
admission, the command, the answer). Not in it: the socket system calls, aiokafka's produce
and fetch, the decoding of outcomes and events (see docs/write-path-cost.md).

Printed: the lowest CPU time per execute over `--rounds` rounds (the lowest is the one
least disturbed by other processes on a shared box). Compare two checkouts by running
each one's copy of this file, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import uvloop  # noqa: E402
from uvicorn.config import Config  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from schemas.commands import Command  # noqa: E402
from schemas.common import ExecutionStatus  # noqa: E402
from schemas.outcomes import CommandOutcome  # noqa: E402
from services.api.app import build_app  # noqa: E402
from services.api.http_deadlines import deadline_protocol  # noqa: E402
from services.common.memory_catalogue import MemoryCatalogue  # noqa: E402
from services.common.settings import ApiSettings  # noqa: E402

DECIDED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class EngineLikeGateway:
    """Accepts every start after one turn of the event loop, as the engine would."""

    async def send(
        self, command: Command, wait_seconds: float | None = None, encoded: bytes | None = None
    ) -> CommandOutcome:
        await asyncio.sleep(0)
        return CommandOutcome(
            command_id=command.command_id,
            command_type=command.type,
            execution_id=command.execution_id,
            accepted=True,
            seq=1,
            run_id=f"run-{command.execution_id}",
            status=ExecutionStatus.RUNNING,
            decided_at=DECIDED,
        )


class Transport(asyncio.Transport):
    """Keeps what the server writes; `answered` is set once a whole JSON answer is in."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.answered = asyncio.Event()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        peers = {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}
        return peers.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        if self.written.endswith(b"}"):
            self.answered.set()

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def uvicorn_protocol(app: Any) -> tuple[Config, Any]:
    """uvicorn's config for `app` as `runstore api` runs it, and its HTTP protocol class
    (httptools, with the request-read deadlines and the protocol-level execute)."""
    config = Config(
        app=app,
        http=deadline_protocol(10, 30, execute=app.state.protocol_execute),
        access_log=False,
        limit_concurrency=4096,
        log_level="warning",
        lifespan="off",
    )
    config.load()
    return config, config.http_protocol_class


def execute_request(n: int) -> bytes:
    """What bench/http_gateway.py sends for a start."""
    body = json.dumps(
        {
            "execution_id": f"h-bench-{n}",
            "input": {"n": 1},
            "wait_for_result": False,
            "force_new_trace": False,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        }
    ).encode()
    head = (
        "POST /v1/workflows/bench/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Authorization: Bearer bench-key\r\nAccept: application/json\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def measure(requests: int, rounds: int) -> float:
    settings = ApiSettings(api_allow_unregistered=True, api_keys="bench-key=bench")
    app = build_app(settings)
    wiring = app.state.wiring
    object.__setattr__(wiring, "gateway", EngineLikeGateway())
    object.__setattr__(wiring, "catalogue", MemoryCatalogue())
    config, protocol_class = uvicorn_protocol(app)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)

    async def one(n: int) -> None:
        transport.written.clear()
        transport.answered.clear()
        protocol.data_received(execute_request(n))
        await transport.answered.wait()

    for n in range(500):  # warm-up (first-use caches, the catalogue)
        await one(n)
    if not transport.written.startswith(b"HTTP/1.1 200 OK"):
        raise RuntimeError(f"the execute failed: {bytes(transport.written[:300])!r}")
    best = float("inf")
    for r in range(rounds):
        started = time.process_time()
        for n in range(requests):
            await one((r + 1) * 10**6 + n)
        best = min(best, (time.process_time() - started) / requests)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the page-token secret warning of build_app
    best = uvloop.run(measure(args.requests, args.rounds))
    rounds = f"lowest of {args.rounds} x {args.requests}"
    print(f"{REPO}: {best * 1e6:.1f} us of CPU per execute ({rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
