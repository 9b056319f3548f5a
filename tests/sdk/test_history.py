"""Run and execution histories through the official SDK (`get_run_history`,
`get_workflow_execution_history`): raw JSON `{execution_id, run_id, workflow_name, status,
events: [...]}` with the stored events ordered by `event_number`."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tests.support.eventually import wait_until
from tests.support.kafka import command, publish
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


def signalled_saga(
    client: Mistral, stack: Stack, prefix: str, n: int
) -> tuple[str, str, dict[str, Any]]:
    """A saga execution signalled `n` times: its id, its run id, and its whole history
    once all `n + 1` events are there."""
    execution_id = new_id(prefix)
    started = client.workflows.execute_workflow(
        workflow_identifier="saga", execution_id=execution_id
    )
    assert started.run_id
    publish(stack.env, signals(execution_id, n))
    return execution_id, started.run_id, wait_for_events(client, started.run_id, n + 1)


def test_run_history_holds_the_stored_events_in_order(client: Mistral, module_stack: Stack) -> None:
    execution_id = new_id("hist")
    started = client.workflows.execute_workflow(
        workflow_identifier="story", execution_id=execution_id, input={"chapter": 1}
    )
    assert started.run_id
    done = command("CompleteExecution", execution_id, run_id=started.run_id, result="the end")
    publish(module_stack.env, [*signals(execution_id, 3), (execution_id, done)])
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
        module_stack.env,
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
    _, _, body = signalled_saga(client, module_stack, "long", 260)
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


# --- the paging extension (page_size + next_page_token; the SDK sends neither) ----------------


def get(stack: Stack, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{stack.api_url}{path}", params=params, headers={"Authorization": "Bearer test-key"}
    )


def test_history_paging_extension_reads_a_long_history_page_by_page(
    client: Mistral, module_stack: Stack
) -> None:
    execution_id, run_id, whole = signalled_saga(client, module_stack, "paged", 249)
    assert whole["next_page_token"] is None  # no paging asked: the whole history
    for path in (
        f"/v1/workflows/runs/{run_id}/history",
        f"/v1/workflows/executions/{execution_id}/history",
    ):
        events: list[Any] = []
        sizes: list[int] = []
        token: str | None = None
        while True:
            res = get(
                module_stack, path, page_size=100, **({"next_page_token": token} if token else {})
            )
            assert res.status_code == 200 and res.headers["content-type"] == "application/json"
            body = res.json()
            assert {k: body[k] for k in ("execution_id", "run_id", "status")} == {
                k: whole[k] for k in ("execution_id", "run_id", "status")
            }
            events += body["events"]
            sizes.append(len(body["events"]))
            token = body["next_page_token"]
            if token is None:
                break
        assert sizes == [100, 100, 50], path
        assert events == whole["events"], path


def test_history_page_errors_are_4xx_with_a_message(client: Mistral, module_stack: Stack) -> None:
    ids = [new_id("pe"), new_id("pe")]
    runs = [
        client.workflows.execute_workflow(workflow_identifier="story", execution_id=i).run_id
        for i in ids
    ]
    publish(module_stack.env, [r for i in ids for r in signals(i, 3)])
    for run_id in runs:
        assert run_id
        wait_for_events(client, run_id, 4)
    run_path = f"/v1/workflows/runs/{runs[0]}/history"
    res = get(module_stack, run_path, page_size=0)
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["query", "page_size"]
    assert get(module_stack, run_path, page_size=1001).status_code == 422
    res = get(module_stack, run_path, next_page_token="garbage!")
    assert res.status_code == 400 and "history page token" in res.json()["detail"]

    first = get(module_stack, run_path, page_size=2).json()
    assert [e["event_number"] for e in first["events"]] == [1, 2] and first["next_page_token"]
    token = first["next_page_token"]
    rest = get(module_stack, run_path, page_size=2, next_page_token=token).json()
    assert [e["event_number"] for e in rest["events"]] == [3, 4] and rest["next_page_token"] is None
    res = get(module_stack, f"/v1/workflows/runs/{runs[1]}/history", next_page_token=token)
    assert res.status_code == 400 and f"run {runs[0]!r}" in res.json()["detail"]
    res = get(module_stack, f"/v1/workflows/executions/{ids[1]}/history", next_page_token=token)
    assert res.status_code == 400 and "does not belong" in res.json()["detail"]
    res = get(module_stack, f"/v1/workflows/executions/{ids[0]}/history", next_page_token=token)
    assert [e["event_number"] for e in res.json()["events"]] == [3, 4]
