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
answer ends or turns out to be a stream (a head without a length: it will not publish).
A request's ticket is in a context variable its task inherits from the protocol.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


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
        then `place` never says that nothing can come: an app served by another server
        (an ASGI test client, plain uvicorn) keeps the window's usual timing."""

    def add(self) -> None:
        """A connection became idle, or a request began."""
        self.unsettled += 1
        self.counting = True

    def remove(self) -> None:
        """An idle connection began a request or closed."""
        self.unsettled -= 1

    def settle(self, ticket: Ticket) -> None:
        """`ticket`'s request no longer counts (idempotent)."""
        if ticket.counted:
            ticket.counted = False
            self.unsettled -= 1

    def place(self) -> bool:
        """The current request's records are in the window: it no longer counts. Whether
        no other request can still come (the window may go out now)."""
        ticket = CURRENT.get()
        if ticket is not None:
            self.settle(ticket)
        return self.counting and self.unsettled <= 0
