"""Limits that keep bad traffic cheap: request body size, and a per-client budget of
failed requests.

Both are plain ASGI middleware, outermost, so a refused request never reaches routing,
authentication or JSON parsing:

- a body larger than `RUNSTORE_API_MAX_BODY_BYTES` is answered 413 (from Content-Length
  before reading anything, or as soon as a chunked body passes the limit);
- every client address has a bucket of `RUNSTORE_API_BAD_REQUESTS_BURST` failed requests
  (400, 401, 403, 404, 405, 413, 422 …) refilled at `RUNSTORE_API_BAD_REQUESTS_PER_SECOND`;
  while it is empty the client gets 429 with `Retry-After` and costs next to nothing.
  Conflicts (409) and successes never drain it.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_COUNTED = frozenset({400, 401, 403, 404, 405, 411, 413, 414, 415, 422, 431})


async def _answer(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised from `receive`: FastAPI passes HTTPExceptions through body parsing, so the
    route answers 413 itself; the middleware answers if nothing else did."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than {max_bytes} bytes")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body larger than {self.max_bytes} bytes"
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _answer(send, 400, "invalid Content-Length")
                    return
                if declared > self.max_bytes:
                    await _answer(send, 413, too_large)
                    return
        if declared is not None:
            # The HTTP parser delivers no more body than the declared length (the most
            # requests, executes included): nothing to count.
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _answer(send, 413, too_large)


def client_of(scope: Scope) -> str:
    """The client address a failure budget is kept for."""
    client_info: Any = scope.get("client")
    return str(client_info[0]) if client_info else "?"


class FailureBudget:
    """Token buckets of failed requests, one per client address."""

    def __init__(
        self, app: ASGIApp, per_second: float, burst: int, max_clients: int = 50_000
    ) -> None:
        self.app = app
        self.max_clients = max_clients
        self.rate = per_second
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def _store(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)

    def admits(self, client: str) -> bool:
        """Whether `client`'s bucket holds a request now (else it is answered 429)."""
        return self._tokens(client, time.monotonic()) >= 1.0

    def charge(self, client: str, status: int) -> None:
        """Take a token from `client`'s bucket if `status` is a failure that counts."""
        if status in _COUNTED:
            now = time.monotonic()
            self._store(client, self._tokens(client, now) - 1.0, now)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = client_of(scope)
        now = time.monotonic()
        if self._tokens(client, now) < 1.0:
            wait = max(1, int((1.0 - self._tokens(client, now)) / self.rate + 0.999))
            await _answer(
                send,
                429,
                "too many failed requests from this client; slow down",
                {"retry-after": str(wait)},
            )
            return
        status = 0

        async def watching_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            self.charge(client, status)
