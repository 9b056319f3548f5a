"""Access control through the official SDK: keys, the shared and separate modes, and the
limits that keep bad traffic from taking the API down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, SDKError

from tests.support.eventually import wait_until
from tests.support.sdk import status_of
from tests.support.stack import Stack, StackWith


def new_id(prefix: str = "au") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def every_endpoint(client: Mistral, execution_id: str) -> dict[str, Callable[[], Any]]:
    ex = client.workflows.executions
    return {
        "execute": lambda: client.workflows.execute_workflow(workflow_identifier="wf"),
        "get": lambda: ex.get_workflow_execution(execution_id=execution_id),
        "list_runs": lambda: client.workflows.runs.list_runs(),
        "cancel": lambda: ex.cancel_workflow_execution(execution_id=execution_id),
        "terminate": lambda: ex.terminate_workflow_execution(execution_id=execution_id),
        "signal": lambda: ex.signal_workflow_execution(execution_id=execution_id, name="s"),
        "reset": lambda: ex.reset_workflow(execution_id=execution_id, event_id=1),
        "query": lambda: ex.query_workflow_execution(execution_id=execution_id, name="q"),
        "update": lambda: ex.update_workflow_execution(execution_id=execution_id, name="u"),
        "batch_cancel": lambda: ex.batch_cancel_workflow_executions(execution_ids=[execution_id]),
        "batch_terminate": lambda: ex.batch_terminate_workflow_executions(
            execution_ids=[execution_id]
        ),
        "stream": lambda: ex.stream(execution_id=execution_id),
        "events_stream": lambda: client.workflows.events.get_stream_events(
            workflow_exec_id=execution_id
        ),
    }


# --- shared mode (the default) ----------------------------------------------------------


@pytest.fixture
def alice(module_stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=module_stack.api_url)


@pytest.fixture
def bob(module_stack: Stack) -> Mistral:
    return Mistral(api_key="bob-key", server_url=module_stack.api_url)


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_every_endpoint_answers_401_without_a_known_key(
    module_stack: Stack, alice: Mistral, key: str | None
) -> None:
    execution_id = alice.workflows.execute_workflow(workflow_identifier="wf").execution_id
    anonymous = Mistral(api_key=key, server_url=module_stack.api_url)
    calls = every_endpoint(anonymous, execution_id)
    statuses = {name: status_of(call) for name, call in calls.items()}
    assert statuses == dict.fromkeys(statuses, 401)


def test_in_shared_mode_users_read_and_command_each_others_runs(
    alice: Mistral, bob: Mistral
) -> None:
    execution_id = alice.workflows.execute_workflow(
        workflow_identifier="shared-wf", execution_id=new_id()
    ).execution_id
    seen_by_bob = bob.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert seen_by_bob.user_id == "alice"
    bob.workflows.executions.signal_workflow_execution(execution_id=execution_id, name="hi")
    bob.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    assert (
        alice.workflows.executions.get_workflow_execution(execution_id=execution_id).status
        == "CANCELED"
    )

    # The list is eventually consistent (docs/read-models.md): wait until Alice's own list
    # shows the run, then Bob's "current user" list must still leave it out.
    def listed_for(client: Mistral) -> set[str]:
        page = client.workflows.runs.list_runs(workflow_identifier="shared-wf", user_id="current")
        return {r.execution_id for r in page.result.executions}

    def assert_alice_lists_it() -> None:
        assert execution_id in listed_for(alice)

    wait_until(assert_alice_lists_it)
    assert execution_id not in listed_for(bob)


# --- separate mode and limits ------------------------------------------------------------


@pytest.fixture(scope="module")
def separate_stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(
        RUNSTORE_API_ACCESS_MODE="separate",
        RUNSTORE_API_MAX_BODY_BYTES="4096",
        RUNSTORE_API_BAD_REQUESTS_BURST="100",
        RUNSTORE_API_BAD_REQUESTS_PER_SECOND="5",
    ) as stack:
        yield stack


def test_in_separate_mode_another_users_run_is_not_found_anywhere(
    separate_stack: Stack,
) -> None:
    alice = Mistral(api_key="test-key", server_url=separate_stack.api_url)
    bob = Mistral(api_key="bob-key", server_url=separate_stack.api_url)
    execution_id = alice.workflows.execute_workflow(
        workflow_identifier="private-wf", execution_id=new_id()
    ).execution_id
    run_id = alice.workflows.executions.get_workflow_execution(execution_id=execution_id).run_id

    def assert_alice_lists_it() -> None:
        listed = alice.workflows.runs.list_runs(workflow_identifier="private-wf")
        assert [r.execution_id for r in listed.result.executions] == [execution_id]

    # Run lists follow the event stream (docs/read-models.md), so the run is listed
    # eventually: wait for that, then bob's empty lists mean he may not see it.
    wait_until(assert_alice_lists_it)

    calls = every_endpoint(bob, execution_id)
    del calls["execute"], calls["list_runs"], calls["batch_cancel"], calls["batch_terminate"]
    statuses = {name: status_of(call) for name, call in calls.items()}
    assert statuses == dict.fromkeys(statuses, 404)
    assert status_of(lambda: bob.workflows.runs.get_run(run_id=run_id or "")) == 404

    batch = bob.workflows.executions.batch_cancel_workflow_executions(execution_ids=[execution_id])
    assert (batch.results or {})[execution_id].status == "failure"
    assert bob.workflows.runs.list_runs(workflow_identifier="private-wf").result.executions == []
    assert bob.workflows.runs.list_runs(user_id="alice").result.executions == []
    with pytest.raises(SDKError) as err:
        bob.workflows.execute_workflow(workflow_identifier="private-wf", execution_id=execution_id)
    assert err.value.status_code == 409
    assert "execution_id_taken" in err.value.body

    # Nothing bob tried touched it; alice still sees and commands it.
    assert (
        alice.workflows.executions.get_workflow_execution(execution_id=execution_id).status
        == "RUNNING"
    )
    assert_alice_lists_it()
    alice.workflows.executions.cancel_workflow_execution(execution_id=execution_id)


def test_in_separate_mode_the_events_stream_must_name_an_execution(
    separate_stack: Stack,
) -> None:
    alice = Mistral(api_key="test-key", server_url=separate_stack.api_url)
    with pytest.raises(HTTPValidationError):
        alice.workflows.events.get_stream_events()


def test_a_body_over_the_limit_is_413(separate_stack: Stack) -> None:
    alice = Mistral(api_key="test-key", server_url=separate_stack.api_url)
    with pytest.raises(SDKError) as err:
        alice.workflows.execute_workflow(workflow_identifier="wf", input={"blob": "x" * 10_000})
    assert err.value.status_code == 413


def test_a_flood_of_bad_requests_does_not_take_the_api_down(separate_stack: Stack) -> None:
    url = separate_stack.api_url

    async def flood() -> list[int]:
        # Another loopback address: the flood has its own budget, the tests keep theirs.
        transport = httpx.AsyncHTTPTransport(
            local_address="127.0.0.3", retries=0, limits=httpx.Limits(max_connections=20)
        )
        async with httpx.AsyncClient(transport=transport, timeout=60) as c:
            bad: list[Any] = []
            for i in range(900):
                kind = i % 3
                if kind == 0:
                    bad.append(
                        c.get(f"{url}/v1/workflows/runs", headers={"Authorization": "Bearer x"})
                    )
                elif kind == 1:
                    bad.append(
                        c.post(
                            f"{url}/v1/workflows/wf/execute",
                            headers={"Authorization": "Bearer test-key"},
                            content=b"{not json",
                        )
                    )
                else:
                    bad.append(
                        c.post(
                            f"{url}/v1/workflows/wf/execute",
                            headers={"Authorization": "Bearer test-key"},
                            content=b"x" * 100_000,
                        )
                    )
            replies = await asyncio.gather(*bad, return_exceptions=True)
        return [r.status_code if isinstance(r, httpx.Response) else -1 for r in replies]

    statuses = asyncio.run(flood())
    assert set(statuses) <= {401, 413, 422, 429, -1}, set(statuses)
    assert statuses.count(429) > 400  # the budget ran out and stayed cheap
    assert statuses.count(-1) < 50  # 413s close the connection: a few resets are fine
    alice = Mistral(api_key="test-key", server_url=url)
    assert alice.workflows.execute_workflow(workflow_identifier="wf").status == "RUNNING"
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert separate_stack.procs["api"].poll() is None
