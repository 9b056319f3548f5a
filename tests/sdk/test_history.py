"""Run and execution histories through the official SDK (`get_run_history`,
`get_workflow_execution_history`): raw JSON `{execution_id, run_id, workflow_name, status,
events: [...]}` with the stored events ordered by `event_number`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tests.sdk.test_runs import publish
from tests.support.eventually import wait_until
from tests.support.kafka import command
from tests.support.stack import Stack


@pytest.fixture(scope="module")
def client(module_stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=module_stack.api_url)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def signals(execution_id: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (execution_id, command("SignalExecution", execution_id, name=f"s{i}", input={"i": i}))
        for i in range(n)
    ]


def wait_for_events(client: Mistral, run_id: str, n: int) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        got = client.workflows.runs.get_run_history(run_id=run_id)
        assert len(got["events"]) == n, f"{len(got['events'])} of {n} events"
        return dict(got)

    return wait_until(check, timeout=60)


def test_run_history_holds_the_stored_events_in_order(client: Mistral, module_stack: Stack) -> None:
    execution_id = new_id("hist")
    started = client.workflows.execute_workflow(
        workflow_identifier="story", execution_id=execution_id, input={"chapter": 1}
    )
    assert started.run_id
    done = command("CompleteExecution", execution_id, run_id=started.run_id, result="the end")
    publish(module_stack, [*signals(execution_id, 3), (execution_id, done)])
    body = wait_for_events(client, started.run_id, 5)

    assert body["execution_id"] == execution_id and body["run_id"] == started.run_id
    assert body["workflow_name"] == "story" and body["status"] == "COMPLETED"
    events = body["events"]
    assert [e["event_number"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["type"] for e in events] == [
        "WORKFLOW_EXECUTION_STARTED",
        *["WORKFLOW_EXECUTION_SIGNALED"] * 3,
        "WORKFLOW_EXECUTION_COMPLETED",
    ]
    first = events[0]
    assert first["attributes"]["input"]["value"] == {"chapter": 1}
    assert first["event_id"] == f"{execution_id}:1:0" and first["seq"] == 1
    assert isinstance(first["timestamp_ns"], int)
    assert [e["attributes"]["input"]["value"] for e in events[1:4]] == [
        {"i": 0},
        {"i": 1},
        {"i": 2},
    ]
    assert events[-1]["attributes"]["result"]["value"] == "the end"

    same = client.workflows.runs.get_run_history(run_id=started.run_id, decode_payloads=False)
    assert same == body
    by_execution = client.workflows.executions.get_workflow_execution_history(
        execution_id=execution_id
    )
    assert by_execution == body


def test_execution_history_is_the_latest_runs_history(client: Mistral, module_stack: Stack) -> None:
    execution_id = new_id("reset")
    first = client.workflows.execute_workflow(
        workflow_identifier="story", execution_id=execution_id
    )
    assert first.run_id
    publish(
        module_stack,
        [
            *signals(execution_id, 2),
            (execution_id, command("ResetExecution", execution_id, event_id=2, reason="again")),
        ],
    )

    def reset_done() -> Any:
        got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
        assert got.run_id != first.run_id
        return got

    latest = wait_until(reset_done, timeout=60)
    body = client.workflows.executions.get_workflow_execution_history(execution_id=execution_id)
    assert body["run_id"] == latest.run_id and body["status"] == "RUNNING"
    types = [e["type"] for e in body["events"]]
    # The new run: reset marker, start, and both signals (signals survive a reset).
    assert types == [
        "WORKFLOW_RUN_RESET",
        "WORKFLOW_EXECUTION_STARTED",
        "WORKFLOW_EXECUTION_SIGNALED",
        "WORKFLOW_EXECUTION_SIGNALED",
    ]
    old = client.workflows.runs.get_run_history(run_id=first.run_id)
    assert old["status"] == "TERMINATED"
    assert [e["type"] for e in old["events"]][-1] == "WORKFLOW_EXECUTION_TERMINATED"
    assert [e["event_number"] for e in old["events"]] == [1, 2, 3, 4]


def test_long_history_spans_chunks_and_comes_back_whole(
    client: Mistral, module_stack: Stack
) -> None:
    execution_id = new_id("long")
    started = client.workflows.execute_workflow(
        workflow_identifier="saga", execution_id=execution_id
    )
    assert started.run_id
    publish(module_stack, signals(execution_id, 260))
    body = wait_for_events(client, started.run_id, 261)
    assert [e["event_number"] for e in body["events"]] == list(range(1, 262))
    assert [e["attributes"]["signal_name"] for e in body["events"][1:]] == [
        f"s{i}" for i in range(260)
    ]


def test_history_right_after_execute_has_the_start(client: Mistral) -> None:
    execution_id = new_id("fresh")
    client.workflows.execute_workflow(workflow_identifier="story", execution_id=execution_id)
    body = client.workflows.executions.get_workflow_execution_history(execution_id=execution_id)
    assert [e["type"] for e in body["events"]] == ["WORKFLOW_EXECUTION_STARTED"]


def test_history_of_unknown_ids_is_404(client: Mistral) -> None:
    with pytest.raises(SDKError) as err:
        client.workflows.runs.get_run_history(run_id="no-such-run")
    assert err.value.status_code == 404 and "run 'no-such-run' not found" in err.value.body
    with pytest.raises(SDKError) as err:
        client.workflows.executions.get_workflow_execution_history(execution_id="nope")
    assert err.value.status_code == 404 and "execution 'nope' not found" in err.value.body
