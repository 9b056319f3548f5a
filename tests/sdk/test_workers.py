"""Workflow code runs: the official SDK against engine, projector, API, timers and a real
`runstore worker --module examples.workflows` process."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from pymongo import MongoClient

from services.common.commit_log import commit_filter, commit_from_doc
from tests.support.eventually import wait_until
from tests.support.metrics import metric_value
from tests.support.stack import WORKER_STACK, Stack, StackWith


@pytest.fixture(scope="module")
def worker_stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(services=WORKER_STACK) as stack:
        yield stack


@pytest.fixture
def client(worker_stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=worker_stack.api_url)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def status_of(client: Mistral, execution_id: str) -> str:
    return str(client.workflows.executions.get_workflow_execution(execution_id=execution_id).status)


def wait_for_status(client: Mistral, execution_id: str, status: str, timeout: float = 30) -> None:
    def reached() -> None:
        assert status_of(client, execution_id) == status

    wait_until(reached, timeout=timeout)


def result_of(client: Mistral, execution_id: str) -> Any:
    return client.workflows.executions.get_workflow_execution(execution_id=execution_id).result


def history_types(client: Mistral, execution_id: str) -> list[str]:
    run_id = client.workflows.executions.get_workflow_execution(execution_id=execution_id).run_id
    history: Any = client.workflows.runs.get_run_history(run_id=run_id)
    events = history if isinstance(history, list) else history.get("events", [])
    return [str(e.get("type")) for e in events]


def test_execute_and_wait_returns_the_echo_of_its_input(client: Mistral) -> None:
    value = {"hello": "world", "n": [1, 2, 3]}
    result = client.workflows.execute_workflow_and_wait(
        workflow_identifier="runstore-echo", input=value, polling_interval=1
    )
    assert result == value


def test_execute_with_wait_for_result_answers_what_a_read_of_the_execution_answers(
    client: Mistral,
) -> None:
    # A fresh id: the API answers from the execution's live events, without a read.
    answered = client.workflows.execute_workflow(
        workflow_identifier="runstore-echo",
        input={"echo": [1, "two"]},
        wait_for_result=True,
        timeout_seconds=60,
    )
    assert answered.status == "COMPLETED"
    assert answered.result == {"echo": [1, "two"]}
    read = client.workflows.executions.get_workflow_execution(execution_id=answered.execution_id)
    assert answered.model_dump() == read.model_dump()


def test_signals_and_queries_round_trip_on_the_approval(client: Mistral) -> None:
    execution_id = new_id("approval")
    client.workflows.execute_workflow(
        workflow_identifier="approval",
        input={"request": "new laptop", "approvers_needed": 2},
        execution_id=execution_id,
    )
    executions = client.workflows.executions

    def waiting_for_two() -> None:
        answer = executions.query_workflow_execution(execution_id=execution_id, name="state")
        assert answer.result["needed"] == 2

    wait_until(waiting_for_two, timeout=30)
    executions.signal_workflow_execution(
        execution_id=execution_id, name="approve", input={"by": "ann"}
    )

    def one_approval() -> None:
        answer = executions.query_workflow_execution(execution_id=execution_id, name="state")
        assert answer.result["approvals"] == ["ann"]

    wait_until(one_approval, timeout=30)
    assert status_of(client, execution_id) == "RUNNING"
    executions.signal_workflow_execution(
        execution_id=execution_id, name="approve", input={"by": "bob"}
    )
    wait_for_status(client, execution_id, "COMPLETED")
    assert result_of(client, execution_id) == {"status": "approved", "by": ["ann", "bob"]}


def test_an_update_changes_the_approval_and_its_validator_refuses_bad_input(
    client: Mistral,
) -> None:
    execution_id = new_id("approval-upd")
    client.workflows.execute_workflow(
        workflow_identifier="approval",
        input={"request": "budget", "approvers_needed": 3},
        execution_id=execution_id,
    )
    executions = client.workflows.executions
    wait_until(
        lambda: executions.query_workflow_execution(execution_id=execution_id, name="state"),
        timeout=30,
    )
    with pytest.raises(Exception, match="approver"):
        executions.update_workflow_execution(
            execution_id=execution_id, name="set_approvers_needed", input={"needed": 0}
        )
    updated = executions.update_workflow_execution(
        execution_id=execution_id, name="set_approvers_needed", input={"needed": 1}
    )
    assert updated.result == {"previous": 3, "needed": 1}
    executions.signal_workflow_execution(
        execution_id=execution_id, name="approve", input={"by": "cy"}
    )
    wait_for_status(client, execution_id, "COMPLETED")


def test_a_failing_saga_compensates_and_fails(client: Mistral) -> None:
    execution_id = new_id("saga-fail")
    client.workflows.execute_workflow(
        workflow_identifier="order-saga",
        input={"order_id": execution_id, "amount": 3, "fail_at": "ship"},
        execution_id=execution_id,
    )
    wait_for_status(client, execution_id, "FAILED", timeout=60)
    types = history_types(client, execution_id)
    assert types.count("ACTIVITY_TASK_RETRYING") == 2  # ship was tried three times
    assert "ACTIVITY_TASK_FAILED" in types


def test_cancel_of_the_saga_runs_its_compensation(client: Mistral) -> None:
    execution_id = new_id("saga-cancel")
    client.workflows.execute_workflow(
        workflow_identifier="order-saga",
        input={"order_id": execution_id, "amount": 3, "wait_seconds": 600},
        execution_id=execution_id,
    )

    def charged() -> None:
        answer = client.workflows.executions.query_workflow_execution(
            execution_id=execution_id, name="progress"
        )
        assert len(answer.result["done"]) == 2

    wait_until(charged, timeout=30)
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    wait_for_status(client, execution_id, "CANCELED", timeout=30)
    answer = client.workflows.executions.query_workflow_execution(
        execution_id=execution_id, name="progress"
    )
    assert answer.result["compensations"] == [
        f"refunded charge-{execution_id}",
        f"released reservation-{execution_id}",
    ]


def test_a_fan_out_of_children_lists_under_its_root(client: Mistral) -> None:
    execution_id = new_id("fan")
    client.workflows.execute_workflow(
        workflow_identifier="fan-out", input={"items": [1, 2, 3]}, execution_id=execution_id
    )
    wait_for_status(client, execution_id, "COMPLETED", timeout=60)
    assert result_of(client, execution_id) == {"results": [1, 2, 3]}
    tree = client.workflows.runs.list_runs(root_execution_id=execution_id)
    ids = {run.execution_id for run in tree.result.executions}
    assert execution_id in ids and len(ids) == 4


def test_the_examples_register_in_the_catalogue_and_the_worker_is_listed(
    client: Mistral, worker_stack: Stack
) -> None:
    def registered() -> set[str]:
        page = client.workflows.get_workflows(limit=50)
        assert page is not None
        names = {w.name for w in page.result.workflows}
        assert {"runstore-echo", "order-saga", "approval", "fan-out"} <= names
        return names

    wait_until(registered, timeout=30)
    echo = client.workflows.get_workflow(workflow_identifier="runstore-echo")
    assert echo.workflow.description == "Returns its input unchanged."
    workers = client.workflows.deployments.list_deployment_workers(name="default")
    worker_pid = worker_stack.procs["worker"].pid
    assert [w.name for w in workers.workers] == [f"{socket.gethostname()}:{worker_pid}"]
    assert workers.workers[0].is_active


def test_workflow_log_lines_reach_the_execution_logs(client: Mistral) -> None:
    execution_id = new_id("approval-logs")
    client.workflows.execute_workflow(
        workflow_identifier="approval",
        input={"request": "logged", "approvers_needed": 1},
        execution_id=execution_id,
    )

    def logged() -> None:
        got = client.workflows.executions.get_workflow_execution_logs(execution_id=execution_id)
        bodies = [r.body for r in got.results]
        assert any("waiting for 1 approval(s) of 'logged'" in b for b in bodies), bodies

    wait_until(logged, timeout=30)


def test_a_deployment_name_routes_the_run_to_that_deployments_workers(
    client: Mistral, worker_stack: Stack
) -> None:
    blue_args = ["--module", "examples.workflows", "--deployment", "blue"]
    worker_stack.start("worker", instance="worker-blue", args=blue_args)
    try:
        execution_id = new_id("blue")
        client.workflows.execute_workflow(
            workflow_identifier="runstore-echo",
            input={"to": "blue"},
            deployment_name="blue",
            execution_id=execution_id,
        )
        wait_for_status(client, execution_id, "COMPLETED", timeout=60)
        assert result_of(client, execution_id) == {"to": "blue"}
        env = worker_stack.env
        with MongoClient(env["RUNSTORE_MONGO_URL"]) as mongo:
            docs = mongo[env["RUNSTORE_MONGO_DATABASE"]]["commits"].find(
                commit_filter(execution_id)
            )
            reporters = {
                e.attributes.worker_id  # type: ignore[union-attr]
                for c in map(commit_from_doc, docs)
                for e in c.events
                if e.type == "WORKFLOW_TASK_COMPLETED"
            }
        blue_pid = worker_stack.procs["worker-blue"].pid
        assert reporters == {f"{socket.gethostname()}:{blue_pid}"}
    finally:
        worker_stack.stop("worker-blue")


def test_the_worker_serves_probes_and_counts_its_tasks_and_activities(
    worker_stack: Stack, client: Mistral
) -> None:
    base = worker_stack.probe_url("worker")
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200

    def ready() -> None:
        answer = httpx.get(f"{base}/readyz", timeout=5)
        assert answer.status_code == 200, answer.text
        assert answer.json()["checks"] == {"mongodb": "ok", "kafka": "ok", "consumer": "ok"}

    wait_until(ready, timeout=30)

    def metrics() -> str:
        return httpx.get(f"{base}/metrics", timeout=5).text

    tasks = "runstore_worker_workflow_tasks_total"
    activities = "runstore_worker_activities_total"
    before = metrics()
    advanced = metric_value(before, tasks, deployment="default", outcome="advanced")
    completed = metric_value(before, activities, deployment="default", outcome="completed")
    failed = metric_value(before, activities, deployment="default", outcome="failed")

    execution_id = new_id("saga")
    client.workflows.execute_workflow(
        workflow_identifier="order-saga",
        input={"order_id": execution_id, "amount": 3, "fail_at": "ship"},
        execution_id=execution_id,
    )
    wait_for_status(client, execution_id, "FAILED", timeout=60)

    after = metrics()
    assert metric_value(after, tasks, deployment="default", outcome="advanced") > advanced
    assert metric_value(after, activities, deployment="default", outcome="completed") > completed
    assert metric_value(after, activities, deployment="default", outcome="failed") > failed
    assert "runstore_worker_workflow_task_seconds_count" in after
    assert 'runstore_batch_size_count{service="worker.default"}' in after
