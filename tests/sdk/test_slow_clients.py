"""Slow and abandoned clients cannot hold the API: request-read deadlines close slow
connections, and SIGTERM ends the process within a bound even with waits in flight.

The bounds asserted are several times the configured ones (the box is shared and slow);
before the deadlines existed these connections were held until the client gave up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.stack import Stack, StackWith

HEADER_S, BODY_S, SHUTDOWN_S = 1, 1, 2
CLOSED_WITHIN = 15.0


@pytest.fixture(scope="module")
def api(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(
        services=("engine", "api"),
        RUNSTORE_API_HEADER_TIMEOUT_SECONDS=str(HEADER_S),
        RUNSTORE_API_BODY_TIMEOUT_SECONDS=str(BODY_S),
        RUNSTORE_API_SHUTDOWN_SECONDS=str(SHUTDOWN_S),
    ) as stack:
        yield stack


def trickle(api: Stack, head: bytes, rest: bytes) -> tuple[float, bytes]:
    """Send `head`, then `rest` a byte every 0.2 s; returns (seconds until the server
    closed the connection, what it answered)."""
    sock = socket.create_connection(("127.0.0.1", api.api_port))
    sock.settimeout(0.2)
    started = time.monotonic()
    answer = b""
    try:
        sock.sendall(head)
        for byte in rest:
            # Read before each byte sent: once the server has answered and closed, a
            # further byte would draw a reset that can discard its unread answer.
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                chunk = None
            except ConnectionResetError:
                break
            if chunk == b"":
                break
            if chunk:
                answer += chunk
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if time.monotonic() - started > CLOSED_WITHIN:
                raise AssertionError(f"connection still open after {CLOSED_WITHIN}s")
        sock.settimeout(CLOSED_WITHIN)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                answer += chunk
        return time.monotonic() - started, answer
    finally:
        sock.close()


def test_a_client_sending_its_headers_slowly_is_cut_off(api: Stack) -> None:
    seconds, answer = trickle(
        api, b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 10_000 + b"\r\n\r\n"
    )
    assert seconds < CLOSED_WITHIN
    assert b"408" in answer


def test_a_client_sending_its_body_slowly_is_cut_off(api: Stack) -> None:
    body = json.dumps({"input": "x" * 10_000}).encode()
    head = (
        b"POST /v1/workflows/wf/execute HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer test-key\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    seconds, answer = trickle(api, head, body)
    assert seconds < CLOSED_WITHIN
    assert b"408" in answer


def test_a_connection_that_sends_nothing_is_closed(api: Stack) -> None:
    with socket.create_connection(("127.0.0.1", api.api_port)) as sock:
        sock.settimeout(CLOSED_WITHIN)
        assert b"408" in sock.recv(4096)


def test_sigterm_ends_the_api_within_a_bound_with_waits_in_flight(api: Stack) -> None:
    # (Last in this module: it stops the module's API.)
    url = f"{api.api_url}/v1/workflows/wf/execute"

    def wait_forever() -> None:
        # Abandoned waits: nobody will ever complete these executions.
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                url,
                json={"wait_for_result": True, "timeout_seconds": 3600},
                headers={"Authorization": "Bearer test-key"},
                timeout=120,
            )

    waiters = [threading.Thread(target=wait_forever, daemon=True) for _ in range(5)]
    for t in waiters:
        t.start()
    time.sleep(2)  # let the waits reach the API
    proc = api.procs.pop("api")
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=CLOSED_WITHIN)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    print(f"api exited {time.monotonic() - started:.1f}s after SIGTERM")
    for t in waiters:
        t.join(timeout=CLOSED_WITHIN)
        assert not t.is_alive()
