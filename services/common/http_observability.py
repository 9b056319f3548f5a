"""Observability of an HTTP (ASGI) service: request latency by route, and the /healthz,
/readyz and /metrics routes, added to a FastAPI app in two lines:

    app.add_middleware(RequestMetrics)      # outermost: sees every answer
    add_probe_routes(app, health)
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import tracing
from services.common.health import Health, answer
from services.common.metrics import HTTP_LATENCY

_PROBES = frozenset(("/healthz", "/readyz", "/metrics"))


class RequestMetrics:
    """Observes each HTTP request's duration under its route template (`/v1/workflows/
    runs/{run_id}`, not the concrete path, so label values stay few). Requests answered
    before routing (404s, 413s; executes handed on by the fast path, which observes the
    ones it answers itself into the same histogram) are labelled by what the `route_hint`
    in their scope says, else `unrouted`. For a streamed response the
    duration is the whole stream's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The histogram's child per (method, route, status): `labels()` converts, locks
        # and looks up on every call, a third of this middleware's CPU per request. The
        # keys are few (routes are templates, methods and statuses a short list).
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or scope.get("route_hint", "unrouted")
            key = (scope["method"], template, status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = HTTP_LATENCY.labels(
                    scope["method"], template, str(status)
                )
            child.observe(time.perf_counter() - started)


class RequestTracing:
    """A SERVER span per HTTP request (probes aside), the child of the request's
    `traceparent` when it has one, and the current span while the request is served: a
    command the request publishes carries it on (services/api/gateway.py). Added only
    when tracing is on. Named `METHOD route-template` once the route is known."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PROBES or tracing.tracer() is None:
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"traceparent", b"tracestate")
        }
        span = tracing.start_span(
            scope["method"],
            tracing.parent_of_text(headers),
            SpanKind.SERVER,
            {"http.request.method": scope["method"], "url.path": scope["path"]},
        )

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                span.set_attribute("http.response.status_code", message["status"])
                if message["status"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        try:
            with trace.use_span(span, end_on_exit=False):
                await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or scope.get("route_hint")
            if route:
                span.set_attribute("http.route", route)
            span.update_name(f"{scope['method']} {route or scope['path']}")
            span.end()


def add_probe_routes(app: FastAPI, health: Health) -> None:
    """GET /healthz, /readyz and /metrics (see services/common/health.py)."""

    async def probe(path: str) -> Response:
        status, content_type, body = await answer(health, path)
        return Response(body, status_code=status, media_type=content_type)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return await probe("/healthz")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        return await probe("/readyz")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return await probe("/metrics")
