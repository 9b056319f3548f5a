"""The API's connection census (services/api/connection_census.py) as the server's HTTP
protocol keeps it (services/api/http_deadlines.py), fed bytes directly: a connection
counts while idle, a request from its first byte until its handler places its records
(`place`), its answer ends or turns out to be a stream, or its connection closes or
becomes a WebSocket; the window is told (`on_zero`) each time nothing counts."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState

from services.api.connection_census import CURRENT, ConnectionCensus, Ticket
from services.api.http_deadlines import deadline_protocol
from tests.unit.test_http_deadlines import _Transport


class _Socket(_Transport):
    """A transport a protocol can be switched on (a WebSocket upgrade)."""

    protocol: Any = None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol


REQUEST = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"


class _Census(ConnectionCensus):
    """A census that notes when it told the window (each time nothing counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.told = 0

        def tell() -> None:
            self.told += 1

        self.on_zero = tell


class _App:
    """/x: places its records (as a start's handler publishes), notes whether the window
    was told, then answers when told to; /stream: a stream that never ends; /batch:
    places twice while holding its ticket; anything else: answered at once."""

    def __init__(self, census: _Census) -> None:
        self.census = census
        self.told: list[bool] = []
        self.answer = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close"})
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] in ("/x", "/batch"):
            before = self.census.told
            if scope["path"] == "/batch":
                with self.census.holding():
                    self.census.place()
                    await asyncio.sleep(0)
                    self.census.place()
                    self.told.append(self.census.told > before)
            else:
                self.census.place()
            self.told.append(self.census.told > before)
            await self.answer.wait()
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await asyncio.Event().wait()  # (cancelled when the test ends)
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


def _server(app: Any, census: ConnectionCensus) -> Any:
    config = Config(
        app=app,
        http=deadline_protocol(5.0, 5.0, census=census),
        log_level="warning",
        lifespan="off",
    )
    config.load()
    protocol_class: Any = config.http_protocol_class

    def connect() -> tuple[Any, _Socket]:
        # A server state per connection: `_close` then cancels this connection's tasks
        # only (the census, not the state, is what the connections share here).
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        transport = _Socket()
        protocol.connection_made(transport)
        return protocol, transport

    return connect


def _served() -> tuple[_Census, _App, Any]:
    """A census, the app above, and how to open a connection to it."""
    census = _Census()
    app = _App(census)
    return census, app, _server(app, census)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _close(*protocols: Any) -> None:
    for protocol in protocols:
        for task in list(protocol.tasks):
            task.cancel()
        protocol.connection_lost(None)


async def test_the_window_is_told_only_once_every_connection_waits() -> None:
    census, app, connect = _served()
    (a, a_out), (b, _) = connect(), connect()
    assert census.unsettled == 2  # two idle connections

    a.data_received(REQUEST)
    await _settle()
    assert app.told == [False]  # b is idle: it may send a request any moment
    b.data_received(REQUEST)
    await _settle()
    assert app.told == [False, True]  # both wait for their answers
    assert census.unsettled == 0

    app.answer.set()
    await _settle()
    assert a_out.written.count(b"200 OK") == 1
    assert census.unsettled == 2  # both idle again
    told = census.told
    _close(a, b)
    assert census.unsettled == 0
    assert census.told == told + 1  # (the last close: nothing can come)


async def test_an_idle_connection_beginning_a_request_never_tells_the_window() -> None:
    census, _, connect = _served()
    (a, _), (b, _) = connect(), connect()
    a.data_received(REQUEST)  # a waits; b is the only idle connection
    await _settle()
    told = census.told
    b.data_received(b"GET /read HTTP/1.1\r\nHost: a\r\n")  # begun, not complete
    assert census.told == told  # idle -> busy is no moment of "nothing can come"
    assert census.unsettled == 1
    _close(a, b)


async def test_a_request_counts_until_answered_when_it_never_places() -> None:
    census, app, connect = _served()
    (a, _), (b, b_out) = connect(), connect()
    b.data_received(b"GET /read HTTP/1.1\r\nHost: a\r\n\r\n")  # answered at once
    a.data_received(REQUEST)
    await _settle()
    assert b_out.written.count(b"200 OK") == 1
    assert app.told == [False]  # b is idle again after its read
    assert census.unsettled == 1
    _close(a, b)


async def test_a_streamed_answer_stops_counting_its_request() -> None:
    census, app, connect = _served()
    (a, _), (s, s_out) = connect(), connect()
    s.data_received(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
    await _settle()
    assert b"data: 1" in s_out.written
    a.data_received(REQUEST)
    await _settle()
    assert app.told == [True]  # the stream's connection cannot send anything meanwhile
    _close(a, s)
    await _settle()
    assert census.unsettled == 0


async def test_a_pipelined_request_places_its_own_ticket() -> None:
    census, app, connect = _served()
    a, a_out = connect()
    a.data_received(REQUEST + REQUEST)  # the second waits for the first's answer
    await _settle()
    assert app.told == [False]  # the second request counts until its handler places it
    assert census.unsettled == 1
    app.answer.set()
    await _settle()
    assert a_out.written.count(b"200 OK") == 2
    assert app.told == [False, True]
    assert census.unsettled == 1  # idle again
    _close(a)
    assert census.unsettled == 0


async def test_a_request_holding_its_ticket_counts_until_its_block_ends() -> None:
    census, app, connect = _served()
    a, _ = connect()
    a.data_received(b"POST /batch HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    await _settle()
    # Inside the block neither placement told the window; its end did.
    assert app.told == [False, True]
    assert census.unsettled == 0
    _close(a)


async def test_a_closing_answer_leaves_no_idle_connection_counted() -> None:
    census, _, connect = _served()
    a, a_out = connect()
    a.data_received(b"GET /read HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await _settle()
    assert a_out.written.count(b"200 OK") == 1
    assert census.unsettled == 0  # before connection_lost: it will not send again
    _close(a)
    assert census.unsettled == 0


async def test_a_websocket_upgrade_stops_counting_its_connection() -> None:
    census, app, connect = _served()
    (a, _), (w, _) = connect(), connect()
    w.data_received(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await _settle()
    assert census.unsettled == 1  # a alone, idle: the upgraded connection is gone
    a.data_received(REQUEST)
    await _settle()
    assert app.told == [True]
    _close(a)


def test_outside_a_request_place_tells_the_window_only_when_nothing_counts() -> None:
    census = _Census()
    census.place()
    assert census.told == 0  # no protocol counts here (another server): never told
    census.add()  # a connection, idle
    census.place()
    assert census.told == 0
    ticket = Ticket()
    census.add()  # it begins a request
    census.remove()
    token = CURRENT.set(ticket)
    try:
        census.place()  # its own ticket settles: nothing else can come
        assert census.told == 1
    finally:
        CURRENT.reset(token)
    census.place()  # a record of no request while nothing counts
    assert census.told == 2
    assert census.unsettled == 0


# A model of the counts: random opens, requests (sometimes two pipelined), placements,
# answers and closes across connections keep `unsettled` equal to idle connections plus
# requests not yet placed or answered, never negative, and the window is told exactly
# when the count comes to 0.
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["open", "request", "pipeline", "place", "answer", "close"]),
        st.integers(0, 3),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(_OPS)
# A close on another connection once cancelled this request's task (a shared server state
# in this test), and its 500 closed its connection: found by CI's seed.
@example([("open", 0), ("open", 1), ("request", 0), ("close", 1)])
def test_the_count_matches_idle_connections_and_unplaced_requests(ops: list[Any]) -> None:
    asyncio.run(_replay(ops))


async def _replay(ops: list[tuple[str, int]]) -> None:
    census = _Census()
    # Per request being served (by its ticket): what its handler is told to do next.
    orders: dict[int, asyncio.Queue[str]] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        ticket = CURRENT.get()
        assert ticket is not None
        orders[id(ticket)] = queue = asyncio.Queue()
        while await queue.get() == "place":
            census.place()
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    connect = _server(app, census)
    conns: dict[int, Any] = {}
    request = b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n"
    for op, n in ops:
        protocol = conns.get(n)
        told = census.told
        before = census.unsettled
        if op == "open" and protocol is None:
            conns[n] = connect()[0]
        elif protocol is None:
            continue
        elif op == "request" and not protocol._tickets:
            protocol.data_received(request)
        elif op == "pipeline" and not protocol._tickets:
            protocol.data_received(request + request)
        elif op in ("place", "answer") and protocol._tickets:
            queue = orders.get(id(protocol._tickets[0]))
            if queue is not None:
                queue.put_nowait(op)
        elif op == "close":
            _close(protocol)
            del conns[n]
        await _settle()
        # (A connection closing after its answer, e.g. a 500, counts no more.)
        idle = sum(1 for p in conns.values() if not p._tickets and not p.transport.is_closing())
        unplaced = sum(1 for p in conns.values() for t in p._tickets if t.counted)
        assert census.unsettled == idle + unplaced >= 0
        if census.unsettled == 0 and before > 0:
            assert census.told > told
    _close(*conns.values())
    await _settle()
    assert census.unsettled == 0
