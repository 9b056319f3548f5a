"""Separate-users mode: no combination of stream filters shows one user another's events.

The combinations are generated from the API's own OpenAPI document: every parameter of the
events stream that names an execution (declared with `access.execution_query`, marked
`x-names-execution`) is set to nothing, to an execution of the caller, or to another
user's, in every combination, and the request is made by the owner and by the other user
against the real stack. A filter added later is either declared as naming an execution
(and then generated here) or listed below as naming none; a parameter that is neither
fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.stack import Stack, StackWith

EVENTS_STREAM = "/v1/workflows/events/stream"
# Parameters of the events stream that name no execution (a new one must be added here
# consciously, or be declared with `execution_query`).
NAMES_NO_EXECUTION = frozenset(
    {
        "scope",
        "activity_name",
        "activity_id",
        "workflow_name",
        "start_seq",
        "workflow_event_types",
        "last_event_id",
        "last-event-id",
    }
)
KEYS = {"alice": "test-key", "bob": "bob-key"}


@pytest.fixture(scope="module")
def separate_stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(
        RUNSTORE_API_ACCESS_MODE="separate", RUNSTORE_API_SSE_KEEPALIVE_SECONDS="0.2"
    ) as stack:
        yield stack


def classified_params(openapi: dict[str, Any], path: str) -> tuple[list[str], list[str]]:
    """(query parameters that name an execution, the other query parameters)."""
    params = openapi["paths"][path]["get"]["parameters"]
    marked = [p["name"] for p in params if p.get("schema", {}).get("x-names-execution")]
    unclassified = {p["name"] for p in params} - set(marked) - NAMES_NO_EXECUTION
    assert not unclassified, (
        f"{path}: parameters {sorted(unclassified)} neither declared with execution_query "
        "nor listed as naming no execution"
    )
    others = [p["name"] for p in params if p["in"] == "query" and p["name"] not in marked]
    return marked, others


def start(url: str, user: str, name: str) -> str:
    execution_id = f"{name}-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {KEYS[user]}"}
    r = httpx.post(
        f"{url}/v1/workflows/private-wf/execute",
        json={"execution_id": execution_id, "input": {"secret": f"{user}-secret"}},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{url}/v1/workflows/executions/{execution_id}/signals",
        json={"name": "payload", "input": {"secret": f"{user}-signal"}},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    return execution_id


async def read_stream(
    client: httpx.AsyncClient, user: str, query: dict[str, str], seconds: float = 1.5
) -> tuple[int, str]:
    """The status, and what the stream sent within `seconds` (the body for non-200)."""
    headers = {"Authorization": f"Bearer {KEYS[user]}"}
    async with client.stream("GET", EVENTS_STREAM, params=query, headers=headers) as r:
        if r.status_code != 200:
            return r.status_code, (await r.aread()).decode()
        received: list[str] = []

        async def collect() -> None:
            async for chunk in r.aiter_text():
                received.append(chunk)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(), seconds)
        return 200, "".join(received)


def test_no_stream_filter_combination_shows_another_users_events(
    separate_stack: Stack,
) -> None:
    url = separate_stack.api_url
    openapi = httpx.get(f"{url}/openapi.json").json()
    names, others = classified_params(openapi, EVENTS_STREAM)
    assert {
        "workflow_exec_id",
        "root_workflow_exec_id",
        "parent_workflow_exec_id",
        "stream",
    } <= set(names)
    own = {"alice": start(url, "alice", "alice"), "bob": start(url, "bob", "bob")}

    cases: list[tuple[str, dict[str, str], set[str], bool]] = []
    for values in itertools.product((None, "alice", "bob"), repeat=len(names)):
        named_owners = {v for v in values if v is not None}
        query = {n: own[v] for n, v in zip(names, values, strict=True) if v is not None}
        for caller in KEYS:
            cases.append((caller, query, named_owners, True))
    # And each parameter said to name no execution, given another user's execution id
    # anyway, next to every combination of the caller's own: still nothing of theirs.
    for other_param in others:
        for values in itertools.product((None, "bob"), repeat=len(names)):
            query = {n: own["bob"] for n, v in zip(names, values, strict=True) if v}
            query[other_param] = own["alice"]
            named = {"bob"} if query.keys() - {other_param} else set()
            cases.append(("bob", query, named, False))

    async def run_all() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            gate = asyncio.Semaphore(32)

            async def one(caller: str, query: dict[str, str]) -> tuple[int, str]:
                async with gate:
                    return await read_stream(client, caller, query)

            return await asyncio.gather(*(one(c, q) for c, q, _, _ in cases))

    results = asyncio.run(run_all())
    owner_saw_own = 0
    for (caller, query, named_owners, control), (status, body) in zip(cases, results, strict=True):
        other = "bob" if caller == "alice" else "alice"
        where = f"{caller} with {query}: {status} {body[:300]!r}"
        # Nothing of the other user's executions, ever (a 404 repeats the id it was given).
        assert f"{other}-secret" not in body and f"{other}-signal" not in body, where
        assert status != 200 or own[other] not in body, where
        if other in named_owners:
            assert status == 404, where
        elif not named_owners:
            assert status in (404, 422), where  # separate mode: name an execution
        else:
            assert status in (200, 422), where
            single = query.get("workflow_exec_id") or query.get("stream")
            if (
                control
                and status == 200
                and single == own[caller]
                and query.get("stream", single) == single
            ):
                # One execution's stream: its history comes first. This is the positive
                # control: the test would see a leaked history.
                assert f"{caller}-signal" in body, where
                owner_saw_own += 1
    assert owner_saw_own > 0
