"""Deadlines on reading a request, which uvicorn does not have; and one write per response.

uvicorn closes a connection idle *between* requests (`timeout_keep_alive`), but a client
that sends its headers or its body a byte at a time holds a connection (and its memory)
for as long as it likes: 1,000 such connections were held for 60 s and none closed. This
protocol (uvicorn's httptools one, plus two timers) closes a connection whose request
headers are not complete `header_seconds` after the connection opened or the request's
first byte came, or whose body is not complete `body_seconds` after its headers; a
request still being read gets a 408 first.

uvicorn writes a response's head (status line and headers) and its body in two writes to
the socket: two `send` system calls and two TCP segments for every answer (on loopback
each costs the sender ~10 us of CPU, the kernel delivering it too). Here the head waits
for the body's first write and goes with it; a head whose body does not follow in the same
step of the event loop (a stream that starts its answer before its first event) goes out
alone right after that step.

And, given a census (connection_census.py), it counts its idle connections and the
requests not yet placed in the command window, for the window to go out at once when no
other request can come.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Protocol, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from services.api.connection_census import CURRENT, ConnectionCensus, Ticket

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
"""What uvicorn writes before the head for a request that expects it (passed through)."""

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: 62\r\n\r\n"
    b'{"detail": "request_timeout: the request was not read in time"}'
)


class CycleServer(Protocol):
    """Serves some requests' whole cycle itself (the execute fast path's `serve`)."""

    def may_serve(self, scope: Any) -> bool: ...

    def serve(
        self, cycle: RequestResponseCycle, transport: Any, app: Any
    ) -> Coroutine[Any, Any, None]: ...


def deadline_protocol(
    header_seconds: float,
    body_seconds: float,
    execute: CycleServer | None = None,
    census: ConnectionCensus | None = None,
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with request-read deadlines (pass as `http=`).

    With `execute`, the requests it `may_serve` run as `execute.serve(cycle, transport,
    app)` instead of `cycle.run_asgi(app)` (the execute fast path at the protocol level,
    execute_fast_path.py): it answers an execute without the ASGI layers and hands
    everything else to `run_asgi`. Pipelining, the concurrency limit (its 503 app is never
    given to `execute`), keep-alive and the graceful shutdown stay uvicorn's: the cycle
    is uvicorn's, the task is counted among the server's.

    With `census`, its connections and requests are counted (connection_census.py)."""
    # How often an armed connection looks at its deadline: no deadline is nearer than
    # this when it is set, so a check never comes later than the deadline it serves.
    period = min(header_seconds, body_seconds)

    class DeadlineProtocol(HttpToolsProtocol):
        # Arming and disarming only note the time (twice per request): a timer per
        # connection looks every `period` while a deadline is set and stops when none is,
        # instead of a timer made and cancelled for each deadline (four per request).
        _deadline_at: float | None = None
        _check: asyncio.TimerHandle | None = None
        # A request's bytes are being read (its first came, it is not complete yet): a
        # pipelined request can begin before the answer to the one before it ends.
        _reading = False
        # The census: whether this connection counts as idle, and the tickets of its
        # requests not answered yet, oldest first (answers end in their requests' order).
        _idle = False
        _tickets: list[Ticket] | None = None

        def _arm(self, seconds: float) -> None:
            self._deadline_at = self.loop.time() + seconds
            if self._check is None:
                self._check = self.loop.call_later(period, self._look)

        def _disarm(self) -> None:
            self._deadline_at = None

        def _look(self) -> None:
            self._check = None
            at = self._deadline_at
            if at is None or self.transport.is_closing():
                return
            now = self.loop.time()
            if now < at:
                self._check = self.loop.call_at(min(at, now + period), self._look)
                return
            self._deadline_at = None
            cycle = self.cycle
            if cycle is None or not cycle.response_started:
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm(header_seconds)
            if census is not None:
                self._tickets = []
                self._idle = True
                census.add()

        def _uncount(self) -> None:
            """This connection no longer counts: closed, or handed to a WebSocket."""
            if census is not None and self._tickets is not None:
                tickets, self._tickets = self._tickets, []
                if self._idle:
                    self._idle = False
                    census.remove()
                for ticket in tickets:
                    census.settle(ticket)

        def _let_go(self) -> None:
            """Nothing of this connection counts or keeps a deadline any more: it closed,
            or it is a WebSocket protocol's now."""
            self._uncount()
            self._disarm()
            if self._check is not None:
                self._check.cancel()
                self._check = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._let_go()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading = True
            self._arm(header_seconds)
            if census is not None and self._tickets is not None:
                # The request counts before the idle connection stops counting: the
                # count must not touch 0 in between (that would end the window).
                self._tickets.append(Ticket())
                census.add()
                if self._idle:
                    self._idle = False
                    census.remove()

        def on_headers_complete(self) -> None:
            self._arm(body_seconds)
            super().on_headers_complete()
            # The new request's cycle writes through a transport that joins its head to
            # its body (its task has not run yet: no write went the old way).
            cycle = self.cycle
            if cycle is not None:
                # A streamed answer (no length) will not publish: its request stops
                # counting in the census when its head goes.
                streaming = None
                if census is not None and self._tickets:
                    streaming = partial(census.settle, self._tickets[-1])
                # (Not a Transport subclass: what it does not define is the socket's.)
                cycle.transport = cast(
                    asyncio.Transport, _OneWriteResponse(self.transport, self.loop, streaming)
                )

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            # The request's task inherits its ticket (the oldest one not answered: a
            # pipelined request's task starts once the one before it is answered).
            token = CURRENT.set(self._tickets[0] if self._tickets else None)
            try:
                self._start_task(cycle, app)
            finally:
                CURRENT.reset(token)

        def _start_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            if (
                execute is None
                or app is not self.app
                or getattr(self.config, "reset_contextvars", False)
                or not execute.may_serve(cycle.scope)
            ):
                super()._start_asgi_task(cycle, app)
                return
            task = self.loop.create_task(execute.serve(cycle, self.transport, app))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        def handle_websocket_upgrade(self) -> None:
            # The connection is the WebSocket protocol's from here: this one is never
            # told that it closes.
            self._let_go()
            super().handle_websocket_upgrade()

        def on_message_complete(self) -> None:
            self._reading = False
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            # A head still held (an answer without a body: HEAD, 204, 304) goes now, before
            # anything that follows the answer's end (a shutdown, the client's EOF) can
            # close the connection under it.
            cycle = self.cycle
            if cycle is not None and isinstance(cycle.transport, _OneWriteResponse):
                cycle.transport.flush()
            # Idle until the next request (uvicorn's keep-alive timeout applies), unless
            # the next one is already being read: its deadline stands.
            if not self._reading:
                self._disarm()
            if census is not None and self._tickets:
                answered = self._tickets.pop(0)
                # Idle again (unless closing) before its request stops counting: the
                # count must not touch 0 in between.
                if not self._tickets and not self._idle and not self.transport.is_closing():
                    self._idle = True
                    census.add()
                census.settle(answered)
            super().on_response_complete()

    return DeadlineProtocol


_SIZED = b"\r\ncontent-length: "
"""How a head with a length names it (uvicorn's httptools protocol writes every header name
in lower case)."""


class _OneWriteResponse:
    """One response's transport, as uvicorn's request cycle uses it: the head (the cycle's
    first write, but for a 100 Continue) is held until the next write, which takes it
    along, or (a head without a length: a stream) until the end of the event loop's
    current step, or the answer's end, or a close."""

    __slots__ = ("_head_seen", "_held", "_loop", "_streaming", "_transport")

    def __init__(
        self,
        transport: Any,
        loop: asyncio.AbstractEventLoop,
        streaming: Callable[[], None] | None = None,
    ) -> None:
        """`streaming`: called when the answer turns out to be a stream (its head has no
        length)."""
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._head_seen = False
        self._streaming = streaming

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(b"".join((held, data)))
        elif self._head_seen or data == _CONTINUE:
            self._transport.write(data)
        else:
            self._head_seen = True
            self._held = data
            if _SIZED not in data:
                self._loop.call_soon(self.flush)
                if self._streaming is not None:
                    self._streaming()
            # A sized answer's head (nearly every one: JSON) waits for its body, which
            # takes it along, or for the answer's end or a close (no body: HEAD, a size of
            # 0), without a callback per answer: a client reads nothing of such an answer
            # before its body anyway. Only a stream's head (chunked, no length) goes at
            # the end of the step, before its first event.

    def flush(self) -> None:
        """Write the head if it is still held."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():  # (as uvicorn writes nothing once gone)
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        # Anything else a cycle might ask (extra info, flow control) is the socket's.
        return getattr(self._transport, name)
