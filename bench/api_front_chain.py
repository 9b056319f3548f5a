"""CPU of the API's front chain per execute, as `build_app` stacks it against the order
before the twelfth session (the fast path innermost, behind the request metrics, the
failure budget and the body limit), in one process, interleaved.

    .venv/bin/python bench/api_front_chain.py [--requests 5000] [--blocks 12]

Only the chain: ASGI calls with a ready scope, `start_execution` replaced by a function
that returns a fixed answer, `send` that drops the messages (no uvicorn, no gateway, no
pydantic). Both chains are timed in alternating blocks of `--requests` requests, so the
box's load hits both alike; prints the lowest and the median CPU per request of each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

import services.api.execute_fast_path as fast_path  # noqa: E402
from services.api.auth import ApiKeys  # noqa: E402
from services.api.deps import Wiring  # noqa: E402
from services.api.execute_fast_path import ExecuteFastPath, InFront  # noqa: E402
from services.api.limits import BodySizeLimit, FailureBudget  # noqa: E402
from services.common.http_observability import RequestMetrics  # noqa: E402

MAX_BODY = 1 << 20
BODY = b'{"input": {"n": 1}, "wait_for_result": false}'
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"authorization", b"Bearer bench-key"),
    (b"accept", b"application/json"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]
ANSWER = b'{"execution_id":"x"}' * 20


async def _started(*_: Any) -> bytes:
    return ANSWER


async def _unreached(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("every request here is an execute the fast path answers")


def _budget(app: ASGIApp) -> FailureBudget:
    return FailureBudget(app, per_second=10.0, burst=100, max_clients=1000)


def innermost(keys: ApiKeys) -> ASGIApp:
    """The order before: the fast path behind the limits and the metrics."""
    chain: ASGIApp = ExecuteFastPath(_unreached, cast(Wiring, None), keys)
    chain = BodySizeLimit(chain, max_bytes=MAX_BODY)
    return RequestMetrics(_budget(chain))


def in_front(keys: ApiKeys) -> ASGIApp:
    """As app.py builds it now: the fast path in front, doing their work."""
    budget = _budget(BodySizeLimit(_unreached, max_bytes=MAX_BODY))
    return ExecuteFastPath(
        RequestMetrics(budget),
        cast(Wiring, None),
        keys,
        in_front=InFront(budget, MAX_BODY),
    )


async def _receive() -> Message:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def _send(message: Message) -> None:
    pass


async def _block(app: ASGIApp, requests: int) -> float:
    started = time.process_time()
    for _ in range(requests):
        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/workflows/bench/execute",
            "headers": HEADERS,
            "client": ("127.0.0.1", 50000),
        }
        await app(scope, _receive, _send)
    return (time.process_time() - started) / requests


async def measure(requests: int, blocks: int) -> dict[str, list[float]]:
    fast_path.start_execution = _started  # type: ignore[assignment]
    keys = ApiKeys("bench-key=bench")
    chains = {"innermost (before)": innermost(keys), "in front (now)": in_front(keys)}
    for app in chains.values():
        await _block(app, requests // 2)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in chains}
    names = list(chains)
    for n in range(blocks):
        for name in names if n % 2 == 0 else reversed(names):
            times[name].append(await _block(chains[name], requests))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--blocks", type=int, default=12)
    args = parser.parse_args()
    for name, values in asyncio.run(measure(args.requests, args.blocks)).items():
        ordered = sorted(values)
        print(
            f"{name}: lowest {ordered[0] * 1e6:.2f}, median {ordered[len(ordered) // 2] * 1e6:.2f}"
            f" us of CPU per execute ({args.blocks} blocks of {args.requests})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
