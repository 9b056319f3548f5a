"""Whether another request can still reach the command window from this server's HTTP
connections: when none can, the window goes out at once (command_window.py).

An HTTP/1.1 connection carries one request at a time: uvicorn reads a pipelined request
only once the one before it is answered. So a request can come only from a connection
that is idle (between requests), or from a request already begun whose records are not
in the window yet. The census counts both; when the count is 0, every connection's
request is either in the window or waiting for an answer that only the window's records
can bring (a closed loop of clients, or any pool of busy keep-alive connections), and
waiting out the window's quiet time only adds to every one of those requests' latency.

Counted by the server's HTTP protocol (http_deadlines.py): a connection counts while
idle, a request from its first byte until its records are placed in the window
(`place`, called by the window for the request whose task publishes), or until its
answer ends or turns out to be a stream (a head without a length: it will not publish),
or its connection closes or becomes a WebSocket. A request's ticket is in a context
variable its task inherits from the protocol (so with uvicorn's `reset_contextvars` no
request settles before its answer and the count never reaches 0: the window keeps its
usual timing). A request that publishes several times (a batch of commands) holds its
ticket (`holding`) until all of its records are in.

Whenever the count reaches 0, `on_zero` (the window's `nothing_can_come`) is told.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Ticket:
    """One request, counted from its first byte until placed, streaming or answered."""

    counted: bool = True


CURRENT: ContextVar[Ticket | None] = ContextVar("runstore_request_ticket", default=None)
"""The ticket of the request whose task runs (None outside a counted request)."""


class ConnectionCensus:
    def __init__(self) -> None:
        self.unsettled = 0
        """Idle connections, plus requests neither placed, streaming nor answered."""
        self.counting = False
        """Whether a server's protocol counts here (its first connection came). Until
        then nothing is said to be unable to come: an app served by another server (an
        ASGI test client, plain uvicorn) keeps the window's usual timing."""
        self.on_zero: Callable[[], None] | None = None
        """Told each time no request can come any more."""

    def add(self) -> None:
        """A connection became idle, or a request began."""
        self.unsettled += 1
        self.counting = True

    def remove(self) -> None:
        """An idle connection began a request or closed."""
        self.unsettled -= 1
        self._check()

    def settle(self, ticket: Ticket) -> None:
        """`ticket`'s request no longer counts (idempotent)."""
        if ticket.counted:
            ticket.counted = False
            self.unsettled -= 1
            self._check()

    def place(self) -> None:
        """The current request's records are in the window: it no longer counts (unless
        it holds its ticket). The window is told if no other request can come."""
        ticket = CURRENT.get()
        if ticket is not None and ticket.counted:
            self.settle(ticket)  # (tells the window if it was the last)
        elif self.counting and self.unsettled <= 0 and self.on_zero is not None:
            self.on_zero()  # a record of no request (or of one placed before)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """The current request publishes several times in this block: it counts until
        the block ends, and then is placed (its records are all in the window)."""
        ticket = CURRENT.get()
        token = CURRENT.set(None)
        try:
            yield
        finally:
            CURRENT.reset(token)
            if ticket is not None:
                self.settle(ticket)

    def _check(self) -> None:
        if self.unsettled > 0:
            return
        if self.unsettled < 0:
            log.error(
                "connection census below 0 (%d): a bug; counting again from 0", self.unsettled
            )
            self.unsettled = 0
        if self.on_zero is not None:
            self.on_zero()
