"""The execute fast path answers exactly what the FastAPI route answers, and hands every
request it does not fully understand to FastAPI with its body intact.

Two apps share one wiring (a gateway that answers like the engine, without Kafka): the
production middleware stack with the fast path, and the same app without it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.commands import Command
from schemas.common import ExecutionStatus
from schemas.outcomes import CommandOutcome, RejectionCode
from services.api import routes_commands
from services.api.access import AccessPolicy
from services.api.auth import ApiKeys
from services.api.deps import Wiring
from services.api.event_fanout import EventFanout
from services.api.execute_fast_path import ExecuteFastPath, InFront
from services.api.front import FrontedApi
from services.api.gateway import CommandGateway, OutcomeTimeout
from services.api.limits import BodySizeLimit, FailureBudget
from services.api.run_reader import RunReader
from services.common.http_observability import RequestMetrics
from services.common.memory_catalogue import MemoryCatalogue
from services.common.metrics import HTTP_LATENCY
from services.common.schedule_store import MongoScheduleStore
from services.common.settings import AccessMode, ApiSettings

ROUTE = "/v1/workflows/{workflow_identifier}/execute"
DECIDED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class EngineLikeGateway:
    """Answers a start like the engine; `busy-*` ids are running, `slow-*` time out."""

    def __init__(self) -> None:
        self.sent: list[Command] = []

    async def send(
        self, command: Command, wait_seconds: float | None = None, encoded: bytes | None = None
    ) -> CommandOutcome:
        self.sent.append(command)
        if command.execution_id.startswith("bug-"):
            raise RuntimeError("a bug in the gateway")
        if command.execution_id.startswith("slow-"):
            raise OutcomeTimeout(f"the engine did not answer for {command.execution_id}")
        if command.execution_id.startswith("busy-"):
            return CommandOutcome(
                command_id=command.command_id,
                command_type=command.type,
                execution_id=command.execution_id,
                accepted=False,
                code=RejectionCode.EXECUTION_ALREADY_RUNNING,
                message="it runs",
                decided_at=DECIDED,
            )
        return CommandOutcome(
            command_id=command.command_id,
            command_type=command.type,
            execution_id=command.execution_id,
            accepted=True,
            seq=1,
            run_id=f"run-of-{command.execution_id}",
            status=ExecutionStatus.RUNNING,
            decided_at=DECIDED,
        )


def make_app(
    fast: bool, gateway: EngineLikeGateway, per_second: float = 100.0, burst: int = 1000
) -> FastAPI:
    settings = ApiSettings(api_allow_unregistered=True)
    keys = ApiKeys("k=alice")
    access = AccessPolicy(AccessMode.SHARED)
    wiring = Wiring(
        settings=settings,
        gateway=cast("CommandGateway", gateway),
        fanout=cast("EventFanout", None),
        access=access,
        all_runs=cast("RunReader", None),
        catalogue=MemoryCatalogue(),  # no workflow registered: execute admits (the setting)
        schedules=cast("MongoScheduleStore", None),
    )
    app = FrontedApi() if fast else FastAPI()
    app.state.settings, app.state.api_keys, app.state.access = settings, keys, access
    app.state.wiring = wiring
    app.include_router(routes_commands.router)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": "internal_error"})

    if isinstance(app, FrontedApi):
        # As app.py: the fast path in front of both limits and the metrics, all in front
        # of FastAPI's own layers.
        def front(inner: ASGIApp) -> ASGIApp:
            chain: ASGIApp = BodySizeLimit(inner, max_bytes=4096)
            budget = FailureBudget(chain, per_second=per_second, burst=burst, max_clients=1000)
            return ExecuteFastPath(
                RequestMetrics(budget),
                wiring,
                keys,
                on_error=internal_error,
                in_front=InFront(budget, 4096),
            )

        app.put_in_front(front)
        return app
    app.add_middleware(BodySizeLimit, max_bytes=4096)
    app.add_middleware(FailureBudget, per_second=per_second, burst=burst, max_clients=1000)
    app.add_middleware(RequestMetrics)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


AUTH = {"Authorization": "Bearer k"}
BODY = {"execution_id": "e-1", "input": {"n": 1}, "wait_for_result": False, "traceparent": "x"}

CASES: list[tuple[str, str, dict[str, str], bytes]] = [
    ("plain start", "/v1/workflows/wf/execute", AUTH, json.dumps(BODY).encode()),
    (
        "with a charset and a deployment",
        "/v1/workflows/wf/execute",
        {**AUTH, "Content-Type": "application/json; charset=utf-8"},
        json.dumps({**BODY, "deployment_name": "d", "task_queue": "q"}).encode(),
    ),
    (
        "idempotency key",
        "/v1/workflows/wf/execute",
        {**AUTH, "Idempotency-Key": "abc"},
        json.dumps({"input": None}).encode(),
    ),
    ("already running", "/v1/workflows/wf/execute", AUTH, b'{"execution_id": "busy-1"}'),
    ("engine silent", "/v1/workflows/wf/execute", AUTH, b'{"execution_id": "slow-1"}'),
    ("no key", "/v1/workflows/wf/execute", {}, json.dumps(BODY).encode()),
    ("unknown key", "/v1/workflows/wf/execute", {"Authorization": "Bearer no"}, b"{}"),
    ("broken json", "/v1/workflows/wf/execute", AUTH, b'{"execution_id": '),
    ("not an object", "/v1/workflows/wf/execute", AUTH, b"[1, 2]"),
    ("empty body", "/v1/workflows/wf/execute", AUTH, b""),
    ("bad id", "/v1/workflows/wf/execute", AUTH, b'{"execution_id": "a b"}'),
    ("bad timeout", "/v1/workflows/wf/execute", AUTH, b'{"timeout_seconds": -1}'),
    ("reserved name", "/v1/workflows/runs/execute", AUTH, b"{}"),
    ("unusable name", "/v1/workflows/a%20b/execute", AUTH, b"{}"),
    (
        "long idempotency key",
        "/v1/workflows/wf/execute",
        {**AUTH, "Idempotency-Key": "k" * 256},
        b"{}",
    ),
    (
        "not json",
        "/v1/workflows/wf/execute",
        {**AUTH, "Content-Type": "text/plain"},
        json.dumps(BODY).encode(),
    ),
    ("too large", "/v1/workflows/wf/execute", AUTH, b'{"input": "' + b"x" * 5000 + b'"}'),
]


@pytest.mark.parametrize(("name", "path", "headers", "body"), CASES, ids=[c[0] for c in CASES])
async def test_the_fast_path_answers_what_the_route_answers(
    name: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    answers = []
    for fast in (False, True):
        gateway = EngineLikeGateway()
        async with client(make_app(fast, gateway)) as c:
            headers = {"Content-Type": "application/json", **headers}
            reply = await c.post(path, content=body, headers=headers)
        sent = [(cmd.type, cmd.execution_id, cmd.user_id, cmd.payload) for cmd in gateway.sent]
        answers.append((reply.status_code, reply.headers.raw, _comparable(reply), sent))
    assert answers[0] == answers[1]


async def test_an_unexpected_error_is_answered_as_the_route_answers_it() -> None:
    """The app's 500 (its handler of unexpected exceptions), though the fast path answers
    in front of FastAPI's server-error middleware; the exception goes on to the server."""
    answers = []
    for fast in (False, True):
        app = make_app(fast, EngineLikeGateway())
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            reply = await c.post(
                "/v1/workflows/wf/execute",
                content=b'{"execution_id": "bug-1"}',
                headers={"Content-Type": "application/json", **AUTH},
            )
        answers.append((reply.status_code, reply.headers.raw, reply.content))
    assert answers[0] == answers[1]
    assert answers[1][0] == 500 and answers[1][2] == b'{"detail":"internal_error"}'
    # And after its answer the exception reaches the server (which logs it and closes the
    # connection), with the fast path as through FastAPI's own middleware.
    for fast in (False, True):
        app = make_app(fast, EngineLikeGateway())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            with pytest.raises(RuntimeError, match="a bug in the gateway"):
                await c.post(
                    "/v1/workflows/wf/execute",
                    content=b'{"execution_id": "bug-1"}',
                    headers={"Content-Type": "application/json", **AUTH},
                )


def _comparable(reply: httpx.Response) -> Any:
    """The body, with the generated execution id of a keyless start left out."""
    try:
        data = reply.json()
    except ValueError:
        return reply.content
    return data


async def test_a_valid_execute_never_reaches_the_router() -> None:
    reached: list[Scope] = []

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    gateway = EngineLikeGateway()
    fast = ExecuteFastPath(router, make_app(False, gateway).state.wiring, ApiKeys("k=alice"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://t") as c:
        reply = await c.post(
            "/v1/workflows/wf/execute",
            json=BODY,
            headers=AUTH,
        )
    assert reached == []
    assert reply.status_code == 200
    assert reply.json()["status"] == "RUNNING"
    assert reply.json()["run_id"] == "run-of-e-1"
    assert [c.user_id for c in gateway.sent] == ["alice"]


async def test_what_it_hands_on_gets_the_whole_body_again() -> None:
    seen: list[bytes] = []

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message: Message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen.append(b"".join(chunks))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    fast = ExecuteFastPath(
        router, make_app(False, EngineLikeGateway()).state.wiring, ApiKeys("k=alice")
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://t") as c:
        await c.post("/v1/workflows/wf/execute", content=b'{"broken', headers=AUTH)
        await c.post("/v1/workflows/wf/execute/", content=b"{}", headers=AUTH)
        await c.get("/v1/workflows/wf/execute", headers=AUTH)
    assert seen == [b'{"broken', b"{}", b""]


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body


@pytest.mark.parametrize("fast", [False, True])
async def test_a_failed_execute_it_answers_charges_the_clients_budget(fast: bool) -> None:
    # Two executes the fast path answers 422 (a bad extension) empty a bucket of two;
    # the next valid one is refused 429 and not started, as through the middlewares.
    gateway = EngineLikeGateway()
    async with client(make_app(fast, gateway, per_second=0.001, burst=2)) as c:
        headers = {"Content-Type": "application/json", **AUTH}
        bad = b'{"extensions": {"execution_timeout_seconds": -1}}'
        statuses = [
            (await c.post("/v1/workflows/wf/execute", content=bad, headers=headers)).status_code
            for _ in range(2)
        ]
        refused = await c.post("/v1/workflows/wf/execute", json=BODY, headers=AUTH)
    assert statuses == [422, 422]
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert gateway.sent == []


@pytest.mark.parametrize("fast", [False, True])
async def test_a_successful_execute_it_answers_leaves_the_budget_alone(fast: bool) -> None:
    gateway = EngineLikeGateway()
    async with client(make_app(fast, gateway, per_second=0.001, burst=1)) as c:
        for n in range(3):
            reply = await c.post(
                "/v1/workflows/wf/execute", json={**BODY, "execution_id": f"e-{n}"}, headers=AUTH
            )
            assert reply.status_code == 200
    assert len(gateway.sent) == 3


def executes_counted(status: str) -> float:
    """How many executes the request metrics counted with `status` so far."""
    labels = {"method": "POST", "route": ROUTE, "status": status}
    for metric in HTTP_LATENCY.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels == labels:
                return sample.value
    return 0.0


@pytest.mark.parametrize("fast", [False, True])
async def test_an_execute_it_answers_is_in_the_request_metrics(fast: bool) -> None:
    count = executes_counted

    before = (count("200"), count("422"))
    async with client(make_app(fast, EngineLikeGateway())) as c:
        await c.post("/v1/workflows/wf/execute", json=BODY, headers=AUTH)
        await c.post(
            "/v1/workflows/wf/execute",
            json={"extensions": {"execution_timeout_seconds": -1}},
            headers=AUTH,
        )
    assert (count("200"), count("422")) == (before[0] + 1, before[1] + 1)


async def test_a_body_of_undeclared_length_is_limited_as_any_request() -> None:
    # Chunked (no Content-Length): the fast path hands it on, the limit counts it.
    answers = []
    for fast in (False, True):
        gateway = EngineLikeGateway()
        async with client(make_app(fast, gateway)) as c:
            for body in (json.dumps(BODY).encode(), b'{"input": "' + b"x" * 5000 + b'"}'):
                reply = await c.post(
                    "/v1/workflows/wf/execute",
                    content=_chunked(body),
                    headers={"Content-Type": "application/json", **AUTH},
                )
                answers.append((fast, reply.status_code, len(gateway.sent)))
    assert answers == [(False, 200, 1), (False, 413, 1), (True, 200, 1), (True, 413, 1)]


async def test_a_request_handed_on_is_counted_once_also_when_the_app_behind_raises() -> None:
    # A body this path does not answer goes on to the metrics behind it, which note it
    # (a 500 when the route raises after answering): the fast path must not note it too.
    async def failing_route(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})
        raise RuntimeError("the route failed")

    budget = FailureBudget(BodySizeLimit(failing_route, max_bytes=4096), 0.001, 1000)
    app = ExecuteFastPath(
        RequestMetrics(budget),
        wiring=None,  # type: ignore[arg-type]
        keys=ApiKeys("k=alice"),
        in_front=InFront(budget, 4096),
    )
    body = b"{broken"
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/workflows/wf/execute",
        "headers": [
            (b"authorization", b"Bearer k"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("10.1.2.3", 1),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        pass

    def count() -> float:
        labels = {"method": "POST", "route": ROUTE, "status": "500"}
        for metric in HTTP_LATENCY.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count") and sample.labels == labels:
                    return sample.value
        return 0.0

    before = count()
    with pytest.raises(RuntimeError):
        await app(scope, receive, send)
    assert count() == before + 1
