"""`POST /v1/workflows/{workflow_identifier}/execute` answered in front of the router.

Execute is the API's hottest request, and FastAPI's per-request machinery (route
matching over every route, the exception and exit-stack middlewares, dependency
resolution, request and response objects) cost more CPU than the work itself
(docs/api-gateway.md has the profile).

This middleware handles a request that is an execute with a known caller and a body
that parses and validates, by calling the very function the route calls
(`start_execution.start_execution`) and rendering its answer or its HTTPException exactly
as FastAPI does. Anything else — no or an unknown key, another
content type, a body that is not valid, an over-long idempotency key, a reserved or
unusable workflow name, a trailing slash — goes on to FastAPI with the body replayed, so
every error keeps FastAPI's own shape.

In `runstore api` it stands in front of the request metrics, the failure budget and the
body-size limit (`InFront`), and does their work itself for the requests it answers:
each was a coroutine frame per request and a wrapper of `send` per message (two per
answer), ~4 % of the API's function calls per start. It answers only a request whose
client's budget holds a token and whose declared length is within the limit (anything
else goes on to them, which answer 429, 413 or 400 as before), charges the budget for a
failure it answers, and observes the request's latency as the metrics middleware does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.exception_handlers import http_exception_handler
from fastapi.requests import Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from services.api.auth import ApiKeys, Caller
from services.api.deps import Wiring
from services.api.limits import FailureBudget, client_of
from services.api.request_json import parse_json
from services.api.shapes import ExecuteRequest
from services.api.start_execution import start_execution
from services.api.workflow_names import RESERVED_WORKFLOW_NAMES
from services.common.metrics import HTTP_LATENCY

_EXECUTE_PATH = re.compile(r"/v1/workflows/([^/]+)/execute")
_MAX_IDEMPOTENCY_KEY = 255  # as the route's `Header(max_length=255)`


_ROUTE = "/v1/workflows/{workflow_identifier}/execute"


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class InFront:
    """The middlewares the fast path stands in front of (module doc): the failure budget
    (the same object as in the chain behind) and the body-size limit's bytes."""

    budget: FailureBudget
    max_body_bytes: int


class ExecuteFastPath:
    def __init__(
        self,
        app: ASGIApp,
        wiring: Wiring,
        keys: ApiKeys,
        on_error: ErrorHandler | None = None,
        in_front: InFront | None = None,
    ) -> None:
        """`on_error`: the app's handler of unexpected exceptions, when this middleware is
        in front of FastAPI's stack (front.py): an exception of an execute it answers is
        then rendered by it and raised on, as FastAPI's server-error middleware does.
        `in_front`: it stands in front of the limits and the request metrics too."""
        self.app = app
        self.wiring = wiring
        self.keys = keys
        self.on_error = on_error
        self.in_front = in_front
        # The latency histogram's child per status (as RequestMetrics keeps them).
        self._latency: dict[int, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        matched = _EXECUTE_PATH.fullmatch(scope["path"])
        if matched is None or matched.group(1) in RESERVED_WORKFLOW_NAMES:
            await self.app(scope, receive, send)
            return
        # For the request metrics, which see no route on requests answered here.
        scope["route_hint"] = _ROUTE
        headers = _headers(scope, _READ)
        caller = self.keys.caller(headers.get("authorization"))
        key = headers.get("idempotency-key")
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if (
            caller is None
            or media_type != "application/json"
            or (key is not None and len(key) > _MAX_IDEMPOTENCY_KEY)
        ):
            await self.app(scope, receive, send)
            return
        front = self.in_front
        if front is None:
            request = await self._request_or_hand_on(scope, receive, send)
            if request is not None:
                await self._respond(scope, receive, send, caller, request, matched.group(1), key)
            return
        # What the limits behind would refuse (or count: a body of undeclared length),
        # they answer.
        client = client_of(scope)
        declared = headers.get("content-length")
        if (
            declared is None
            or not (declared.isascii() and declared.isdigit())
            or int(declared) > front.max_body_bytes
            or not front.budget.admits(client)
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # (as RequestMetrics notes a request that ends without an answer)
        request = await self._request_or_hand_on(scope, receive, send)
        if request is None:
            # Not an execute this path answers: the middlewares behind counted it, also
            # when it raised, so it is not noted here.
            return
        try:
            status = await self._respond(
                scope, receive, send, caller, request, matched.group(1), key
            )
        finally:
            self._note(front, client, status, time.perf_counter() - started)

    def _note(self, front: InFront, client: str, status: int, seconds: float) -> None:
        """What the failure budget and the request metrics note of an answer."""
        front.budget.charge(client, status)
        latency = self._latency.get(status)
        if latency is None:
            latency = self._latency[status] = HTTP_LATENCY.labels("POST", _ROUTE, str(status))
        latency.observe(seconds)

    async def _request_or_hand_on(
        self, scope: Scope, receive: Receive, send: Send
    ) -> ExecuteRequest | None:
        """The body as an execute this path answers; None when it is not one, after
        handing the request on with the body replayed."""
        body = await _read_body(receive)
        request = _parse(body)
        if request is None:
            await self.app(scope, _replay(body, receive), send)
        return request

    async def _respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        caller: Caller,
        request: ExecuteRequest,
        workflow_identifier: str,
        key: str | None,
    ) -> int:
        """Answer a parsed execute; its status code."""
        try:
            answer = await start_execution(caller, self.wiring, request, workflow_identifier, key)
        except Exception as exc:
            return await self._answer_failure(scope, receive, send, exc)
        # What `Response(answer, media_type="application/json")` sends, without the object.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(answer)).encode("latin-1")),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})
        return 200

    async def _answer_failure(
        self, scope: Scope, receive: Receive, send: Send, exc: BaseException
    ) -> int:
        """Answer what `start_execution` raised as FastAPI does; its status code. An
        unexpected exception is raised on after its answer."""
        if isinstance(exc, HTTPException):
            response = await http_exception_handler(Request(scope), exc)
            await response(scope, receive, send)
            return response.status_code
        if self.on_error is None or not isinstance(exc, Exception):
            raise exc
        # What Starlette's ServerErrorMiddleware does: the handler's answer, then the
        # exception goes on to the server (which logs it and closes the connection).
        response = await self.on_error(Request(scope), exc)
        await response(scope, receive, send)
        raise exc

    # The protocol level (http_deadlines.py): an execute's whole HTTP cycle.

    def may_serve(self, scope: Scope) -> bool:
        """Whether `serve` should take this request (`scope` as uvicorn's protocol made
        it: no middleware has seen it). Only when this path stands in front of the limits
        and the metrics (it does their work)."""
        return (
            self.in_front is not None
            and scope["method"] == "POST"
            and _EXECUTE_PATH.fullmatch(scope["path"]) is not None
        )

    async def serve(
        self, uvicorn_cycle: RequestResponseCycle, transport: Any, app: ASGIApp
    ) -> None:
        """What uvicorn's `cycle.run_asgi(app)` does for this request, with `app` the
        server's whole app (uvicorn's proxy headers, then this middleware and the chain),
        but for an execute this path answers without the ASGI layers: no proxy-headers,
        `FrontedApi` or middleware frame, no `receive`/`send` messages for the answer
        (its head rendered here and written with its body in one write on `transport`,
        the connection's own). Everything else — another request, one with proxy
        headers or an access log to write, a body this path does not answer, a failed
        start — goes through `cycle.run_asgi` as before, so what the client sees is what
        the ASGI path sends (tests/unit/test_http_execute.py compares the bytes)."""
        # (uvicorn types its scopes and messages more narrowly than Starlette's ASGI app.)
        cycle: Any = uvicorn_cycle
        scope: Scope = cycle.scope
        front = self.in_front
        matched = _EXECUTE_PATH.fullmatch(scope["path"])
        if (
            front is None
            or cycle.access_log
            or matched is None
            or matched.group(1) in RESERVED_WORKFLOW_NAMES
        ):
            await cycle.run_asgi(app)
            return
        headers = _headers(scope, _READ_IN_PROTOCOL)
        caller = self.keys.caller(headers.get("authorization"))
        key = headers.get("idempotency-key")
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        declared = headers.get("content-length")
        client = client_of(scope)
        if (
            caller is None
            or media_type != "application/json"
            or (key is not None and len(key) > _MAX_IDEMPOTENCY_KEY)
            or "x-forwarded-for" in headers
            or "x-forwarded-proto" in headers
            or declared is None
            or not (declared.isascii() and declared.isdigit())
            or int(declared) > front.max_body_bytes
            or not front.budget.admits(client)
        ):
            await cycle.run_asgi(app)
            return
        started = time.perf_counter()
        body = await _read_body(cycle.receive)
        request = _parse(body)
        if request is None:
            await cycle.run_asgi(_replaying(app, body))
            return
        # What the middleware notes (the chain behind is not involved from here).
        scope["route_hint"] = _ROUTE
        status = 500
        try:
            try:
                answer = await start_execution(caller, self.wiring, request, matched.group(1), key)
            except BaseException as exc:  # (a cancel too: run_asgi logs it, answers 500)
                failure = exc

                async def answer_failure(scope: Scope, receive: Receive, send: Send) -> None:
                    nonlocal status
                    status = await self._answer_failure(scope, receive, send, failure)

                await cycle.run_asgi(answer_failure)
                return
            status = 200
            await _answer(cycle, transport, answer)
        finally:
            self._note(front, client, status, time.perf_counter() - started)


_READ = frozenset({b"authorization", b"idempotency-key", b"content-type", b"content-length"})
# At the protocol level, also the headers uvicorn's proxy-headers middleware reads (a
# request that has them goes that way).
_READ_IN_PROTOCOL = _READ | {b"x-forwarded-for", b"x-forwarded-proto"}


def _headers(scope: Scope, read: frozenset[bytes]) -> dict[str, str]:
    """The headers this path reads; none at all when one of them is repeated (FastAPI
    then decides what that means)."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.lower()
        if name in read:
            text = name.decode("latin-1")
            if text in found:
                return {}
            found[text] = raw_value.decode("latin-1")
    return found


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _parse(body: bytes) -> ExecuteRequest | None:
    """The body as the route would validate it (`parse_json`, then the model), or None
    when FastAPI should answer it."""
    try:
        value: Any = parse_json(body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    try:
        return ExecuteRequest.model_validate(value)
    except ValidationError:
        return None


_OK_HEAD = b"HTTP/1.1 200 OK\r\n"
_JSON_TYPE = b"\r\ncontent-type: application/json\r\n"


async def _answer(cycle: Any, transport: Any, answer: bytes) -> None:
    """What uvicorn's `cycle.send` (`cycle`: a `RequestResponseCycle`) writes for the
    route's 200 (`_respond`'s two messages: the server's default headers, the length, the
    type, `connection: close` when the connection ends with it), in one write, and the
    cycle's end as `send` marks it."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    parts = [_OK_HEAD]
    for name, value in cycle.default_headers:
        parts += (name.lower(), b": ", value, b"\r\n")
    parts += (b"content-length: ", str(len(answer)).encode(), _JSON_TYPE)
    keep_alive = cycle.keep_alive
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", answer)
    transport.write(b"".join(parts))
    cycle.response_complete = True
    cycle.message_event.set()
    if not keep_alive:
        transport.close()
    cycle.on_response()


def _replaying(app: ASGIApp, body: bytes) -> ASGIApp:
    """`app` given the already-read body first."""

    async def replayed(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, _replay(body, receive), send)

    return replayed


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body out again, then the real stream."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
