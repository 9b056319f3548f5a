"""The OpenAPI document, walked operation by operation against the real stack
(separate-users mode, engine + projector + API on Kafka + FerretDB).

1. What every operation declares: 401/408/413/429 everywhere, 422 where it takes input,
   404 where it names an execution or run, a 2xx; errors as `application/json`, event
   streams' 200 as `text/event-stream` only, everything else as JSON.
2. One real request per operation, made by the owner with real ids (an execution, its run,
   a schedule, a deployment, a registration, a workflow of the catalogue): the answer's
   status code, content type, body and headers are ones the operation declares (checked by
   schemathesis' own validators; streams read to their first event).
3. Every parameter that names an execution or a run (path, query or body), set to another
   user's execution with the caller's own everywhere else: 404 (or the documented answer),
   and nothing of the other user's in the answer. The owner's request above, made after
   the other user's, is the control: it shows the ids were real and that the other user's
   commands changed nothing. A parameter that looks like it names an execution and is not
   classified here fails the test.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import schemathesis

from schemas.registry import LogRecord
from services.api.responses import EVERY_ROUTE
from services.common.worker_registry import ExecutionLogShipper
from tests.support.catalogue import register, registration, with_db
from tests.support.fuzzing import short_run_config
from tests.support.stack import Stack, StackWith

KEYS = {"alice": "test-key", "bob": "bob-key"}
JSON = "application/json"
SSE = "text/event-stream"
# Parameters (path, query, body field) that name an execution or a run. Any parameter whose
# name looks like one must be listed here (a new one is then checked below).
LOOKS_LIKE_AN_EXECUTION = re.compile(r"exec|run_id|^stream$")
NAMES_A_RUN = {"run_id", "workflow_run_id"}
NAMES_AN_EXECUTION = {
    "execution_id",
    "execution_ids",
    "workflow_exec_id",
    "root_workflow_exec_id",
    "parent_workflow_exec_id",
    "root_execution_id",
    "stream",
}
# Where naming another user's execution is not a 404, and what it is instead
# (docs/api-gateway.md, Access). Each 200 here must be the same answer as for an id that
# names nothing, so it tells nothing about the other user's execution.
NOT_A_404 = {
    # An execute naming another user's execution id: the id is taken.
    ("POST /v1/workflows/{workflow_identifier}/execute", "execution_id"): 409,
    ("POST /v1/workflows/registrations/{workflow_registration_id}/execute", "execution_id"): 409,
    # Batches answer per item (`not found`); a list filtered by another user's root is an
    # empty page, as for an unknown one.
    ("POST /v1/workflows/executions/cancel", "execution_ids"): 200,
    ("POST /v1/workflows/executions/terminate", "execution_ids"): 200,
    ("GET /v1/workflows/runs", "root_execution_id"): 200,
    # A filter inside the path's execution (the caller's): another execution's run matches
    # none of its records.
    ("GET /v1/workflows/executions/{execution_id}/logs", "run_id"): 200,
    ("GET /v1/workflows/executions/{execution_id}/logs/stream", "run_id"): 200,
}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def separate_stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(
        RUNSTORE_API_ACCESS_MODE="separate",
        RUNSTORE_API_SSE_KEEPALIVE_SECONDS="0.2",
        RUNSTORE_API_WORKER_TIMEOUT_SECONDS="1",
        RUNSTORE_API_BAD_REQUESTS_BURST="100000",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def document(separate_stack: Stack) -> dict[str, Any]:
    return httpx.get(f"{separate_stack.api_url}/openapi.json").json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def body_fields(document: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    """Top-level property names of an operation's JSON body (through `$ref` and `anyOf`)."""
    content = operation.get("requestBody", {}).get("content", {}).get(JSON, {})
    pending = [content.get("schema", {})]
    names: set[str] = set()
    while pending:
        schema = pending.pop()
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        pending.extend(schema.get("anyOf", []))
        names |= set(schema.get("properties", {}))
    return names


def execution_params(document: dict[str, Any], operation: dict[str, Any]) -> list[str]:
    """The operation's parameters and body fields that name an execution or a run."""
    names = [p["name"] for p in operation.get("parameters", [])] + sorted(
        body_fields(document, operation)
    )
    found = []
    for name in names:
        if name in NAMES_AN_EXECUTION | NAMES_A_RUN:
            found.append(name)
        else:
            assert not LOOKS_LIKE_AN_EXECUTION.search(name), (
                f"{name!r} looks like it names an execution: classify it in this test"
            )
    return found


def test_every_operation_declares_the_codes_and_content_types_it_can_answer(
    document: dict[str, Any],
) -> None:
    problems = []
    for method, path, operation in operations(document):
        label = f"{method} {path}"
        responses = {int(code): r for code, r in operation["responses"].items()}
        takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
        must = {*EVERY_ROUTE, *([422] if takes_input else [])}
        names = execution_params(document, operation)
        if "{" in path or any(NOT_A_404.get((label, n), 404) == 404 for n in names):
            must.add(404)
        if missing := must - responses.keys():
            problems.append(f"{label}: {sorted(missing)} not declared")
        if not any(200 <= code < 300 for code in responses):
            problems.append(f"{label}: no 2xx declared")
        for code, response in responses.items():
            media = set(response.get("content", {}))
            if code == 204:
                expected: set[str] = set()
            elif code == 200 and path.endswith("/stream"):
                expected = {SSE}
                schema = response["content"][SSE]["schema"]
                if "data" not in schema.get("required", []):
                    problems.append(f"{label}: its events are not declared")
            else:
                expected = {JSON}
            if media != expected:
                problems.append(f"{label}: {code} declared as {sorted(media)}, not {expected}")
            for declared in response.get("content", {}).values():
                if "schema" not in declared:
                    problems.append(f"{label}: {code} has no schema")
    assert not problems, "\n".join(problems)


# --- real requests ------------------------------------------------------------------------


@dataclass
class World:
    """What each user owns, to name in requests."""

    url: str
    own: dict[str, dict[str, str]] = field(default_factory=dict)

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[user]}"}

    def post(self, user: str, path: str, body: Any) -> httpx.Response:
        r = httpx.post(f"{self.url}{path}", json=body, headers=self.headers(user), timeout=30)
        assert r.status_code < 300, f"{path}: {r.status_code} {r.text}"
        return r

    def start(self, user: str, workflow: str = "walk-wf") -> str:
        execution_id = uid(f"{user}-walk")
        self.post(
            user,
            f"/v1/workflows/{workflow}/execute",
            {"execution_id": execution_id, "input": {"secret": f"{user}-secret"}},
        )
        return execution_id

    def run_of(self, user: str, execution_id: str) -> str:
        r = httpx.get(
            f"{self.url}/v1/workflows/executions/{execution_id}", headers=self.headers(user)
        )
        assert r.status_code == 200, r.text
        return str(r.json()["run_id"])


def build_world(stack: Stack) -> World:
    world = World(stack.api_url)
    for user in KEYS:
        main = world.start(user)
        world.post(
            user,
            f"/v1/workflows/executions/{main}/signals",
            {"name": "payload", "input": {"secret": f"{user}-signal"}},
        )
        deployment = uid(f"{user}-dep")
        workflow = uid(f"{user}-wf")
        archived = uid(f"{user}-arch")
        register(stack, registration(deployment, [workflow, archived]))
        schedule = uid(f"{user}-sched")
        doomed_schedule = uid(f"{user}-sched")
        for schedule_id in (schedule, doomed_schedule):
            world.post(
                user,
                "/v1/workflows/schedules",
                {
                    "workflow_identifier": "walk-wf",
                    "schedule_id": schedule_id,
                    "schedule": {"input": {}, "cron_expressions": ["0 0 1 1 *"]},
                },
            )
        doomed_deployment = uid(f"{user}-dep")
        world.post(user, "/v1/workflows/deployments", {"name": doomed_deployment, "spec": {}})
        world.own[user] = {
            "execution": main,
            "run": world.run_of(user, main),
            # Commands that close or reset an execution each get one of their own.
            "cancel": world.start(user),
            "terminate": world.start(user),
            "reset": world.start(user),
            "batch_cancel": world.start(user),
            "batch_terminate": world.start(user),
            "deployment": deployment,
            "doomed_deployment": doomed_deployment,
            "workflow": workflow,
            "archived": archived,
            "schedule": schedule,
            "doomed_schedule": doomed_schedule,
        }
        regs = httpx.get(
            f"{world.url}/v1/workflows/registrations",
            params={"workflow_name": workflow},
            headers=world.headers(user),
        ).json()
        world.own[user]["registration"] = regs["workflow_registrations"][0]["id"]
        ship_log(stack, main, deployment)
    return world


def ship_log(stack: Stack, execution_id: str, deployment: str) -> None:
    async def ship(db: Any) -> None:
        shipper = ExecutionLogShipper(db, worker_id="walk-worker", deployment_name=deployment)
        shipper.add(
            LogRecord(
                execution_id=execution_id,
                timestamp=datetime.now(UTC),
                body="walked",
                workflow_name="walk-wf",
            )
        )
        await shipper.flush()

    with_db(stack, ship)


@dataclass
class Request:
    path: dict[str, str]
    query: dict[str, str]
    body: Any


def sample(label: str, own: dict[str, str]) -> Request:
    """One real request of the operation, naming `own`'s things."""
    path = {
        "execution_id": own["execution"],
        "run_id": own["run"],
        "schedule_id": own["schedule"],
        "name": own["deployment"],
        "deployment_id": own["deployment"],
        "workflow_identifier": own["workflow"],
        "workflow_name": own["workflow"],
        "workflow_registration_id": own["registration"],
    }
    query: dict[str, str] = {}
    body: Any = schemathesis.core.NOT_SET
    route = label.partition(" ")[2]
    if route.endswith("/executions/{execution_id}/cancel"):
        path["execution_id"] = own["cancel"]
    elif route.endswith("/executions/{execution_id}/terminate"):
        path["execution_id"] = own["terminate"]
    elif route.endswith("/reset"):
        path["execution_id"] = own["reset"]
        body = {"event_id": 1, "reason": "walked"}
    elif route.endswith("/executions/cancel"):
        body = {"execution_ids": [own["batch_cancel"]]}
    elif route.endswith("/executions/terminate"):
        body = {"execution_ids": [own["batch_terminate"]]}
    elif route.endswith("/signals"):
        body = {"name": "walked", "input": {"n": 1}}
    elif route.endswith(("/queries", "/updates")):
        body = {"name": "status", "input": {}}
    elif route.endswith("/execute"):
        body = {"execution_id": uid("walk-exec"), "input": {}}
        if route.startswith("/v1/workflows/{workflow_identifier}"):
            path["workflow_identifier"] = "walk-wf"
    elif label == "GET /v1/workflows/runs":
        query = {"root_execution_id": own["execution"]}
    elif route in ("/v1/workflows/events/stream", "/v1/workflows/events/list"):
        query = {"workflow_exec_id": own["execution"]}
    elif label == "POST /v1/workflows/schedules":
        body = {
            "workflow_identifier": "walk-wf",
            "schedule_id": uid("walk-sched"),
            "schedule": {"input": {}, "cron_expressions": ["0 0 1 1 *"]},
        }
    elif label == "PATCH /v1/workflows/schedules/{schedule_id}":
        body = {"schedule": {"input": {}, "cron_expressions": ["0 0 2 1 *"]}}
    elif label == "DELETE /v1/workflows/schedules/{schedule_id}":
        path["schedule_id"] = own["doomed_schedule"]
    elif route.endswith(("/pause", "/resume")):
        body = {"note": "walked"}
    elif route.endswith("/trigger"):
        body = {}
    elif label == "POST /v1/workflows/deployments":
        body = {"name": uid("walk-dep"), "spec": {}}
    elif label == "PATCH /v1/workflows/deployments/{name}":
        body = {"spec": {}}
    elif label == "DELETE /v1/workflows/deployments/{name}":
        path["name"] = own["doomed_deployment"]
    elif route in ("/v1/workflows/archive", "/v1/workflows/unarchive"):
        body = {"workflow_ids": [own["archived"]]}
    elif route.endswith(("/{workflow_identifier}/archive", "/{workflow_identifier}/unarchive")):
        path["workflow_identifier"] = own["archived"]
    elif label == "PUT /v1/workflows/{workflow_identifier}":
        body = {"description": "walked"}
    elif route.endswith("/tags"):
        body = {"tags": ["walked"]}
    used = set(re.findall(r"{(\w+)}", route))
    return Request({k: v for k, v in path.items() if k in used}, query, body)


def with_names(request: Request, name: str, value: str) -> Request:
    """`request` with one parameter or body field naming `value` instead."""
    path, query, body = dict(request.path), dict(request.query), request.body
    if name in path:
        path[name] = value
    elif isinstance(body, dict) and name in body:
        body = {**body, name: [value] if isinstance(body[name], list) else value}
    else:
        query[name] = value
    return Request(path, query, body)


def comparable(body: str, named: str) -> str:
    """An answer with the id it was asked about blanked, keep-alive comments and blank
    lines dropped (how many keep-alives a stream sends depends on the box's load)."""
    lines = body.replace(named, "<id>").splitlines()
    return "\n".join(line for line in lines if line and not line.startswith(":"))


def test_every_operation_answers_what_it_declares_and_keeps_users_apart(
    separate_stack: Stack, document: dict[str, Any]
) -> None:
    world = build_world(separate_stack)
    alice, bob = world.own["alice"], world.own["bob"]
    schema = schemathesis.openapi.from_url(
        f"{world.url}/openapi.json", config=short_run_config(world.url)
    )

    def call(label: str, user: str, request: Request) -> tuple[int, str]:
        method, _, path = label.partition(" ")
        case = schema[path][method].Case(
            path_parameters=request.path,
            query=request.query,
            body=request.body,
            headers=world.headers(user),
        )
        response = case.call_and_validate()
        return response.status_code, response.content.decode(errors="replace")

    statuses: dict[str, int] = {}
    first_events: dict[str, str] = {}
    leaks = []
    for method, path, operation in operations(document):
        label = f"{method} {path}"
        names = execution_params(document, operation)
        own_request = sample(label, alice)
        for name in names:
            value = alice["run"] if name in NAMES_A_RUN else alice["execution"]
            theirs = with_names(sample(label, bob), name, value)
            status, body = call(label, "bob", theirs)
            expected = NOT_A_404.get((label, name), 404)
            where = f"{label} by bob, {name}={value}: {status} {body[:300]}"
            if status != expected:
                leaks.append(where)
            if "alice-secret" in body or "alice-signal" in body:
                leaks.append(f"alice's data in {where}")
            if expected == 200:
                unknown = uid("nobody") if name not in NAMES_A_RUN else str(uuid.uuid4())
                _, nothing = call(label, "bob", with_names(sample(label, bob), name, unknown))
                if comparable(body, value) != comparable(nothing, unknown):
                    leaks.append(f"{where}\n  differs from an unknown id's: {nothing[:300]}")
        statuses[label], body = call(label, "alice", own_request)
        if path.endswith("/stream"):
            first_events[label] = body
    assert not leaks, "\n".join(leaks)
    # The owner's requests are the control: real ids, answered as the owner.
    refused = {label: s for label, s in statuses.items() if s >= 400}
    assert refused == {
        # Documented: hosted-code-only operations (docs/api-gateway.md).
        "GET /v1/workflows/deployments/{name}/archive": 501,
        "POST /v1/workflows/deployments/{deployment_id}/unharden": 501,
        # No worker runs in this stack: `no_worker_reply`.
        "POST /v1/workflows/executions/{execution_id}/queries": 504,
        "POST /v1/workflows/executions/{execution_id}/updates": 504,
    }, refused
    # Each stream sent its first event (validated against the declared event schema).
    assert first_events and all("\ndata: " in body for body in first_events.values()), first_events
    # Bob's commands above changed nothing of alice's: her cancel of the same execution was
    # the first (204, not 409 `execution_already_closed`).
    assert statuses["POST /v1/workflows/executions/{execution_id}/cancel"] == 204
