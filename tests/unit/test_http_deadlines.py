"""The request-read deadlines of services/api/http_deadlines.py, on uvicorn's protocol fed
bytes directly (no socket): a request whose headers or body do not arrive in time gets a
408 and its connection is closed; a connection whose requests keep coming complete is
never cut, however long it lives. (tests/sdk/test_slow_clients.py does the same through
real sockets against the running API.) And its responses: head and body in one write,
a stream's head without waiting for its first event."""

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
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        self.writes.append(bytes(data))

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


def _connection(app: Any = _ok) -> tuple[Any, _Transport]:
    config = Config(
        app=app, http=deadline_protocol(HEADER_S, BODY_S), log_level="warning", lifespan="off"
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


async def _sized(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-length", b"2"), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_an_answer_goes_out_in_one_write() -> None:
    protocol, transport = _connection(_sized)
    for n in range(1, 4):  # and every answer of a kept-alive connection
        protocol.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")

        async def answered(n: int = n) -> None:
            assert transport.written.count(b"HTTP/1.1 200 OK") == n

        await assert_eventually(answered, timeout=5)
    assert len(transport.writes) == 3
    for write in transport.writes:
        assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\nok")
    protocol.connection_lost(None)


async def test_a_sized_answer_whose_body_comes_steps_later_still_goes_in_one_write() -> None:
    body_ready = asyncio.Event()

    async def slow_body(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"content-length", b"2"), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await body_ready.wait()
        await send({"type": "http.response.body", "body": b"ok"})

    protocol, transport = _connection(slow_body)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(5):  # steps go by with the head held (no flush at a step's end)
        await asyncio.sleep(0)
    assert transport.writes == []
    body_ready.set()
    await assert_eventually(lambda: _ends_with(transport, b"ok"), timeout=5)
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    protocol.connection_lost(None)


async def test_a_streams_head_goes_out_before_its_first_event() -> None:
    first_event = asyncio.Event()

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await first_event.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    protocol, transport = _connection(stream)
    protocol.data_received(b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n")

    async def head_sent() -> None:
        assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")

    await assert_eventually(head_sent, timeout=5)
    assert b"data: 1" not in transport.written
    first_event.set()
    await assert_eventually(lambda: _ends_with(transport, b"0\r\n\r\n"), timeout=5)
    assert b"data: 1" in transport.written
    protocol.connection_lost(None)


async def test_a_100_continue_goes_out_before_the_answer() -> None:
    protocol, transport = _connection(_sized)
    protocol.data_received(
        b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    await assert_eventually(lambda: _ends_with(transport, b"100 Continue\r\n\r\n"), timeout=5)
    protocol.data_received(b"hi")
    await assert_eventually(lambda: _ends_with(transport, b"ok"), timeout=5)
    assert transport.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(transport.writes) == 2 and transport.writes[1].startswith(b"HTTP/1.1 200 OK")
    protocol.connection_lost(None)


async def _ends_with(transport: _Transport, tail: bytes) -> None:
    assert transport.written.endswith(tail), bytes(transport.written[-200:])


async def test_a_head_answer_goes_out_before_a_shutdown_in_the_same_step() -> None:
    # HEAD has no body to carry the held head: it must go when the answer ends, not after
    # the step in which uvicorn's graceful shutdown may already have closed the socket.
    protocol, transport = _connection(_sized)
    protocol.data_received(b"HEAD /a HTTP/1.1\r\nHost: a\r\n\r\n")
    asyncio.get_running_loop().call_soon(protocol.shutdown)
    await assert_eventually(lambda: _closed(transport), timeout=5)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written.endswith(b"\r\n\r\n")  # the head alone


async def test_a_closing_answer_without_a_body_still_sends_its_head() -> None:
    protocol, transport = _connection(_sized)
    protocol.data_received(b"HEAD /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await assert_eventually(lambda: _closed(transport), timeout=5)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_pipelined_requests_header_deadline_survives_the_answer_before_it() -> None:
    protocol, transport = _connection()
    # One complete request and the first bytes of a second, whose header lines then come a
    # byte at a time and never end: the answer to the first must not lift its deadline.
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n")
    for _ in range(int(HEADER_S * 10 / 0.05)):
        await asyncio.sleep(0.05)
        if transport.closed:
            break
        protocol.data_received(b"X")
    assert transport.closed
    assert transport.written.count(b"HTTP/1.1 200 OK") == 1


async def _closed(transport: _Transport) -> None:
    assert transport.closed
