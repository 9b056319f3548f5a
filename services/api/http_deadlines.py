"""Deadlines on reading a request, which uvicorn does not have.

uvicorn closes a connection idle *between* requests (`timeout_keep_alive`), but a client
that sends its headers or its body a byte at a time holds a connection (and its memory)
for as long as it likes: 1,000 such connections were held for 60 s and none closed. This
protocol (uvicorn's httptools one, plus two timers) closes a connection whose request
headers are not complete `header_seconds` after the connection opened or the request's
first byte came, or whose body is not complete `body_seconds` after its headers; a
request still being read gets a 408 first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: 62\r\n\r\n"
    b'{"detail": "request_timeout: the request was not read in time"}'
)


def deadline_protocol(header_seconds: float, body_seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with request-read deadlines (pass as `http=`)."""
    # How often an armed connection looks at its deadline: no deadline is nearer than
    # this when it is set, so a check never comes later than the deadline it serves.
    period = min(header_seconds, body_seconds)

    class DeadlineProtocol(HttpToolsProtocol):
        # Arming and disarming only note the time (twice per request): a timer per
        # connection looks every `period` while a deadline is set and stops when none is,
        # instead of a timer made and cancelled for each deadline (four per request).
        _deadline_at: float | None = None
        _check: asyncio.TimerHandle | None = None

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

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._check is not None:
                self._check.cancel()
                self._check = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(header_seconds)

        def on_headers_complete(self) -> None:
            self._arm(body_seconds)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            # Idle until the next request: uvicorn's keep-alive timeout applies.
            self._disarm()
            super().on_response_complete()

    return DeadlineProtocol
