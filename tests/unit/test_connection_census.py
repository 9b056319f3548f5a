"""The API's connection census (services/api/connection_census.py) as the server's HTTP
protocol keeps it (services/api/http_deadlines.py), fed bytes directly: a connection
counts while idle, a request from its first byte until its handler places its records
(`place`), its answer ends, or its answer turns out to be a stream; `place` tells the
window that no other request can come only once nothing counts."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.config import Config
from uvicorn.server import ServerState

from services.api.connection_census import CURRENT, ConnectionCensus, Ticket
from services.api.http_deadlines import deadline_protocol
from tests.unit.test_http_deadlines import _Transport

REQUEST = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"


class _App:
    """Places each request whose path is /x (as a start's handler publishes), notes what
    `place` said, then answers when told to; /stream answers with a stream that never
    ends; anything else is answered at once without placing."""

    def __init__(self, census: ConnectionCensus) -> None:
        self.census = census
        self.said: list[bool] = []
        self.answer = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/x":
            self.said.append(self.census.place())
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
    state = ServerState()

    def connect() -> tuple[Any, _Transport]:
        protocol = protocol_class(config=config, server_state=state, app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        return protocol, transport

    return connect


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_place_says_nothing_can_come_only_once_every_connection_waits() -> None:
    census = ConnectionCensus()
    app = _App(census)
    connect = _server(app, census)
    (a, a_out), (b, _) = connect(), connect()
    assert census.unsettled == 2  # two idle connections

    a.data_received(REQUEST)
    await _settle()
    assert app.said == [False]  # b is idle: it may send a request any moment
    b.data_received(REQUEST)
    await _settle()
    assert app.said == [False, True]  # both wait for their answers
    assert census.unsettled == 0

    app.answer.set()
    await _settle()
    assert a_out.written.count(b"200 OK") == 1
    assert census.unsettled == 2  # both idle again
    a.connection_lost(None)
    b.connection_lost(None)
    assert census.unsettled == 0


async def test_a_request_counts_until_answered_when_it_never_places() -> None:
    census = ConnectionCensus()
    app = _App(census)
    connect = _server(app, census)
    (a, _), (b, b_out) = connect(), connect()
    b.data_received(b"GET /read HTTP/1.1\r\nHost: a\r\n\r\n")  # answered at once
    a.data_received(REQUEST)
    await _settle()
    assert b_out.written.count(b"200 OK") == 1
    assert app.said == [False]  # b is idle again after its read
    assert census.unsettled == 1


async def test_a_streamed_answer_stops_counting_its_request() -> None:
    census = ConnectionCensus()
    app = _App(census)
    connect = _server(app, census)
    (a, _), (s, s_out) = connect(), connect()
    s.data_received(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
    await _settle()
    assert b"data: 1" in s_out.written
    a.data_received(REQUEST)
    await _settle()
    assert app.said == [True]  # the stream's connection cannot send anything meanwhile
    for protocol in (a, s):
        for task in list(protocol.tasks):
            task.cancel()
        protocol.connection_lost(None)
    await _settle()
    assert census.unsettled == 0


async def test_a_pipelined_request_places_its_own_ticket() -> None:
    census = ConnectionCensus()
    app = _App(census)
    connect = _server(app, census)
    a, a_out = connect()
    a.data_received(REQUEST + REQUEST)  # the second waits for the first's answer
    await _settle()
    assert app.said == [False]  # the second request counts until its handler places it
    assert census.unsettled == 1
    app.answer.set()
    await _settle()
    assert a_out.written.count(b"200 OK") == 2
    assert app.said == [False, True]
    assert census.unsettled == 1  # idle again
    a.connection_lost(None)
    assert census.unsettled == 0


def test_outside_a_request_place_only_reads_the_count() -> None:
    census = ConnectionCensus()
    assert not census.place()  # no protocol counts here (another server): never says so
    census.add()  # a connection, idle
    assert not census.place()
    ticket = Ticket()
    census.remove()  # it begins a request
    census.add()
    token = CURRENT.set(ticket)
    try:
        assert census.place()  # its own ticket settles: nothing else can come
        assert census.place()  # idempotent
    finally:
        CURRENT.reset(token)
    assert census.unsettled == 0


# A model of the counts: random opens, requests, placements, answers and closes across
# connections keep `unsettled` equal to idle connections + requests not yet placed or
# answered, and never negative.
_OPS = st.lists(
    st.tuples(st.sampled_from(["open", "request", "place", "answer", "close"]), st.integers(0, 3)),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(_OPS)
def test_the_count_matches_idle_connections_and_unplaced_requests(ops: list[Any]) -> None:
    asyncio.run(_replay(ops))


async def _replay(ops: list[tuple[str, int]]) -> None:
    census = ConnectionCensus()
    gates: dict[int, asyncio.Event] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        ticket = CURRENT.get()
        assert ticket is not None
        key = id(ticket)
        gates[key] = asyncio.Event()
        await gates[key].wait()  # "place" or "answer" below opens it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    connect = _server(app, census)
    conns: dict[int, Any] = {}
    for op, n in ops:
        protocol = conns.get(n)
        if op == "open" and protocol is None:
            conns[n] = connect()[0]
        elif protocol is None:
            continue
        elif op == "request" and not protocol._tickets:
            protocol.data_received(b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n")
        elif op in ("place", "answer") and protocol._tickets:
            ticket = protocol._tickets[0]
            if op == "place":
                census.settle(ticket)
            elif id(ticket) in gates:
                gates[id(ticket)].set()
        elif op == "close":
            for task in list(protocol.tasks):
                task.cancel()
            protocol.connection_lost(None)
            del conns[n]
        await _settle()
        idle = sum(1 for p in conns.values() if not p._tickets)
        unplaced = sum(1 for p in conns.values() for t in p._tickets if t.counted)
        assert census.unsettled == idle + unplaced >= 0
    for protocol in conns.values():
        for task in list(protocol.tasks):
            task.cancel()
        protocol.connection_lost(None)
    await _settle()
    assert census.unsettled == 0
