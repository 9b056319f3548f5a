"""The API's own middlewares in front of FastAPI's layers, so that the requests they answer
themselves (the execute fast path, execute_fast_path.py) skip FastAPI's.

`app.add_middleware` puts a middleware inside FastAPI's own stack: every request first
goes through `FastAPI.__call__`, Starlette's, the server-error, exception-telemetry and
body-limit middlewares, each a coroutine frame (the error middleware also wraps `send`).
For an execute that the fast path answers, those were about a tenth of its CPU in process
(bench/api_execute_cpu.py). `FrontedApi` is a FastAPI app (routes, state, OpenAPI, test
clients unchanged) that hands each request to a chain of middlewares built around its
own FastAPI handling instead: what the front passes on is served exactly as before, and
its middlewares see every request and answer as before (they treat a lifespan or
websocket scope as they did: passed through).

The one thing FastAPI's stack did for the front that the front must now do itself: an
exception escaping a request it answers becomes the app's 500 (the server-error
middleware's work), see `ExecuteFastPath`'s `on_error`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send


class FrontedApi(FastAPI):
    """FastAPI with a front chain of middlewares (see the module doc)."""

    _front: ASGIApp | None = None

    def put_in_front(self, build: Callable[[ASGIApp], ASGIApp]) -> None:
        """`build(inner)` wraps `inner` (this app's FastAPI handling) in the middlewares
        that go in front, outermost last, as `add_middleware` stacks them."""
        self._front = build(self._behind_front)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self._front
        if front is None:
            await super().__call__(scope, receive, send)
        else:
            await front(scope, receive, send)

    async def _behind_front(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
