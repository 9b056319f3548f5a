"""The request-read deadlines of services/api/http_deadlines.py, on uvicorn's protocol fed
bytes directly (no socket): a request whose headers or body do not arrive in time gets a
408 and its connection is closed; a connection whose requests keep coming complete is
never cut, however long it lives. (tests/sdk/test_slow_clients.py does the same through
real sockets against the running API.)"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from services.api.http_deadlines import deadline_protocol
from tests.support.eventually import assert_eventually

HEADER_S, BODY_S = 0.2, 0.3


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _connection() -> tuple[Any, _Transport]:
    config = Config(
        app=_ok, http=deadline_protocol(HEADER_S, BODY_S), log_level="warning", lifespan="off"
    )
    config.load()
    protocol_class: Any = config.http_protocol_class
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_headers_that_do_not_come_in_time_are_answered_408_and_closed() -> None:
    protocol, transport = _connection()
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\n")  # never finished

    async def cut_off() -> None:
        assert transport.closed
        assert transport.written.startswith(b"HTTP/1.1 408 ")

    await assert_eventually(cut_off, timeout=5)


async def test_a_body_that_does_not_come_in_time_is_answered_408_and_closed() -> None:
    protocol, transport = _connection()
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")

    async def cut_off() -> None:
        assert transport.closed
        assert b"408 Request Timeout" in transport.written

    await assert_eventually(cut_off, timeout=5)


async def test_a_connection_whose_requests_come_complete_is_never_cut() -> None:
    protocol, transport = _connection()
    request = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
    # Requests for several times the longest deadline, each split so that every deadline
    # is armed and disarmed many times over.
    for _ in range(40):
        protocol.data_received(request[:20])
        await asyncio.sleep(HEADER_S / 8)
        protocol.data_received(request[20:])
        await asyncio.sleep(HEADER_S / 8)
    assert not transport.closed
    assert transport.written.count(b"HTTP/1.1 200 OK") == 40
    assert b"408" not in transport.written
    protocol.connection_lost(None)
