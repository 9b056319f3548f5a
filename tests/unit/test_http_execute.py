"""The execute fast path at the protocol level (`deadline_protocol(..., execute=...)`,
`ExecuteFastPath.serve`): uvicorn's protocol fed raw bytes, once without it (every request
through the ASGI app: uvicorn's proxy headers, the fast path as a middleware, the limits,
the metrics, FastAPI) and once with it. The bytes a client receives are the same, request
for request: status lines, headers (the server's own, `connection: close`), bodies, error
answers, on kept-alive and pipelined connections."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from fastapi import FastAPI
from uvicorn.config import Config
from uvicorn.server import ServerState

from services.api.execute_fast_path import ExecuteFastPath
from services.api.http_deadlines import deadline_protocol
from tests.support.eventually import assert_eventually
from tests.unit.test_execute_fast_path import (
    CASES,
    EngineLikeGateway,
    executes_counted,
    make_app,
)
from tests.unit.test_http_deadlines import _Transport


class _Connection:
    def __init__(self, app: FastAPI, at_protocol: bool) -> None:
        fast = _fast_path(app) if at_protocol else None
        assert not at_protocol or fast is not None
        config = Config(
            app=app,
            http=deadline_protocol(10, 30, execute=fast),
            log_level="critical",
            lifespan="off",
            access_log=False,  # as `runstore api` runs it (with one, the ASGI way)
        )
        config.load()
        self.state = ServerState()
        self.state.default_headers = [(b"server", b"uvicorn"), (b"date", b"Mon, 07 Dec 2026")]
        protocol_class: Any = config.http_protocol_class
        self.protocol = protocol_class(config=config, server_state=self.state, app_state={})
        self.transport = _Transport()
        self.protocol.connection_made(self.transport)

    async def exchange(self, data: bytes, answers: int = 1) -> bytes:
        """Feed `data`; what is written once `answers` answers are complete."""
        before = self.state.total_requests
        self.protocol.data_received(data)

        async def answered() -> None:
            assert self.state.total_requests >= before + answers or self.transport.closed
            assert not self.state.tasks

        await assert_eventually(answered, timeout=5)
        written = bytes(self.transport.written)
        self.transport.written.clear()
        return written


def _fast_path(app: FastAPI) -> ExecuteFastPath | None:
    """The app's fast path in its front chain, which `build_app` hands to the protocol as
    `app.state.protocol_execute` (the test app of test_execute_fast_path.py does not)."""
    chain: Any = app._front  # type: ignore[attr-defined]
    while chain is not None and not isinstance(chain, ExecuteFastPath):
        chain = getattr(chain, "app", None)
    return chain


def _request(path: str, headers: dict[str, str], body: bytes, close: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_GENERATED = re.compile(rb'"execution_id":"[0-9a-z]{20,}"')


def _comparable(written: bytes) -> bytes:
    """The answer with a keyless start's generated execution id left out (the same
    length in both: the content-length header stays comparable)."""
    return _GENERATED.sub(b'"execution_id":"<generated>"', written)


async def _both(requests: list[tuple[bytes, int]], burst: int = 1000) -> list[list[bytes]]:
    """What each kind of connection wrote for `requests` (data, answers it holds), with
    the commands each gateway was sent."""
    seen = []
    for at_protocol in (False, True):
        gateway = EngineLikeGateway()
        connection = _Connection(make_app(True, gateway, 0.001, burst), at_protocol)
        written = [_comparable(await connection.exchange(d, n)) for d, n in requests]
        sent = [repr((c.type, c.execution_id, c.user_id, c.payload)).encode() for c in gateway.sent]
        seen.append([*written, b"closed" if connection.transport.closed else b"open", *sent])
    return seen


@pytest.mark.parametrize(("name", "path", "headers", "body"), CASES, ids=[c[0] for c in CASES])
async def test_the_protocol_level_answers_what_the_asgi_app_answers(
    name: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    headers = {"Content-Type": "application/json", **headers}
    request = _request(path, headers, body)
    # Twice on one kept-alive connection, then once more asking it to close.
    closing = _request(path, headers, body, close=True)
    asgi, protocol = await _both([(request, 1), (request, 1), (closing, 1)])
    assert asgi == protocol
    if name == "plain start":
        assert protocol[0].startswith(b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ndate: ")
        assert b"connection: close\r\n" in protocol[2] and protocol[3] == b"closed"


async def test_pipelined_executes_are_answered_in_order() -> None:
    one = _request(
        "/v1/workflows/wf/execute",
        {"Content-Type": "application/json", "Authorization": "Bearer k"},
        json.dumps({"execution_id": "e-1"}).encode(),
    )
    two = _request(
        "/v1/workflows/wf/execute",
        {"Content-Type": "application/json", "Authorization": "Bearer k"},
        json.dumps({"execution_id": "busy-2"}).encode(),
    )
    three = _request(
        "/v1/workflows/wf/execute",
        {"Content-Type": "application/json", "Authorization": "Bearer k"},
        json.dumps({"execution_id": "e-3"}).encode(),
    )
    asgi, protocol = await _both([(one + two + three, 3)])
    assert asgi == protocol
    answers = protocol[0].split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"409", b"200"]
    assert b'"e-1"' in answers[0] and b'"e-3"' in answers[2]


async def test_proxied_requests_go_the_asgi_way() -> None:
    # uvicorn's proxy-headers middleware makes the forwarded address the client (the
    # failure budget's key): with a forwarded header the request goes through it. (A
    # budget of one failure: the forwarded client's failure must not be the proxy's.)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    bad = json.dumps({"extensions": {"execution_timeout_seconds": -1}}).encode()
    asgi, protocol = await _both(
        [
            (
                _request(
                    "/v1/workflows/wf/execute", {**headers, "X-Forwarded-For": "10.1.2.3"}, bad
                ),
                1,
            ),
            (_request("/v1/workflows/wf/execute", headers, bad), 1),
            (_request("/v1/workflows/wf/execute", headers, bad), 1),
        ],
        burst=1,
    )
    assert [w[:12] for w in protocol[:3]] == [b"HTTP/1.1 422", b"HTTP/1.1 422", b"HTTP/1.1 429"]
    assert asgi == protocol


async def test_its_answers_are_in_the_request_metrics_and_the_budget() -> None:
    count = executes_counted

    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    bad = _request(
        "/v1/workflows/wf/execute", headers, b'{"extensions": {"execution_timeout_seconds": -1}}'
    )
    good = _request("/v1/workflows/wf/execute", headers, b'{"execution_id": "e-1"}')
    gateway = EngineLikeGateway()
    connection = _Connection(make_app(True, gateway, per_second=0.001, burst=2), True)
    before = (count("200"), count("422"))
    first = await connection.exchange(good)
    failed = [await connection.exchange(bad) for _ in range(2)]
    refused = await connection.exchange(good)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert [f[:12] for f in failed] == [b"HTTP/1.1 422"] * 2
    assert refused.startswith(b"HTTP/1.1 429 ")
    assert len(gateway.sent) == 1
    assert (count("200"), count("422")) == (before[0] + 1, before[1] + 2)


async def test_a_shutdown_lets_the_execute_in_flight_answer_and_closes_after_it() -> None:
    # uvicorn's graceful shutdown: a connection whose answer is in progress is asked to
    # close after it (`connection: close`), not cut.
    release = asyncio.Event()

    class SlowGateway(EngineLikeGateway):
        async def send(
            self, command: Any, wait_seconds: float | None = None, encoded: bytes | None = None
        ) -> Any:
            await release.wait()
            return await super().send(command, wait_seconds, encoded)

    connection = _Connection(make_app(True, SlowGateway()), True)
    request = _request(
        "/v1/workflows/wf/execute",
        {"Content-Type": "application/json", "Authorization": "Bearer k"},
        b'{"execution_id": "e-1"}',
    )
    connection.protocol.data_received(request)
    await asyncio.sleep(0.01)
    connection.protocol.shutdown()
    assert not connection.transport.closed
    release.set()
    written = await connection.exchange(b"", 0)
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in written
    assert connection.transport.closed


async def test_a_valid_execute_skips_the_asgi_app(monkeypatch: pytest.MonkeyPatch) -> None:
    reached: list[str] = []
    through = ExecuteFastPath.__call__

    async def noted(self: ExecuteFastPath, scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await through(self, scope, receive, send)

    monkeypatch.setattr(ExecuteFastPath, "__call__", noted)
    connection = _Connection(make_app(True, EngineLikeGateway()), True)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    answered = await connection.exchange(
        _request("/v1/workflows/wf/execute", headers, b'{"execution_id": "e-1"}')
    )
    handed_on = await connection.exchange(_request("/v1/workflows/wf/execute", headers, b"[1]"))
    assert answered.startswith(b"HTTP/1.1 200 ") and handed_on.startswith(b"HTTP/1.1 422 ")
    assert reached == ["/v1/workflows/wf/execute"]  # the second only
