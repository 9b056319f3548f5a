"""The command endpoints, driven by the official SDK against a real stack: every HTTP
answer tells what the engine did with the command (docs/api-gateway.md)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, SDKError

from tests.support.eventually import wait_until
from tests.support.stack import Stack


@pytest.fixture
def client(module_stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=module_stack.api_url)


def new_id(prefix: str = "ex") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def start(client: Mistral, execution_id: str | None = None, workflow: str = "greeter") -> str:
    started = client.workflows.execute_workflow(
        workflow_identifier=workflow, execution_id=execution_id or new_id(), input={"n": 1}
    )
    assert started.status == "RUNNING"
    return started.execution_id


def status_of(client: Mistral, execution_id: str) -> str | None:
    return client.workflows.executions.get_workflow_execution(execution_id=execution_id).status


def stored_events(client: Mistral, execution_id: str) -> list[Any]:
    """Every public event of the execution so far (the stream, from the store only)."""
    stream = client.workflows.executions.stream(execution_id=execution_id, event_source="DATABASE")
    with stream:
        return [item.data.data for item in stream]


# --- cancel / terminate -------------------------------------------------------------------


def test_cancel_answers_204_and_the_execution_is_canceled(client: Mistral) -> None:
    execution_id = start(client)
    assert client.workflows.executions.cancel_workflow_execution(execution_id=execution_id) is None
    got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert got.status == "CANCELED"
    assert got.end_time is not None


def test_terminate_answers_204_and_the_execution_is_terminated(client: Mistral) -> None:
    execution_id = start(client)
    client.workflows.executions.terminate_workflow_execution(execution_id=execution_id)
    assert status_of(client, execution_id) == "TERMINATED"


def test_cancel_of_a_closed_execution_is_409(client: Mistral) -> None:
    execution_id = start(client)
    client.workflows.executions.terminate_workflow_execution(execution_id=execution_id)
    with pytest.raises(SDKError) as err:
        client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    assert err.value.status_code == 409
    assert "execution_already_closed" in err.value.body


@pytest.mark.parametrize("call", ["cancel", "terminate", "signal", "reset", "query", "update"])
def test_commands_to_an_unknown_execution_are_404(client: Mistral, call: str) -> None:
    executions = client.workflows.executions
    missing = new_id("missing")
    calls = {
        "cancel": lambda: executions.cancel_workflow_execution(execution_id=missing),
        "terminate": lambda: executions.terminate_workflow_execution(execution_id=missing),
        "signal": lambda: executions.signal_workflow_execution(execution_id=missing, name="s"),
        "reset": lambda: executions.reset_workflow(execution_id=missing, event_id=1),
        "query": lambda: executions.query_workflow_execution(execution_id=missing, name="q"),
        "update": lambda: executions.update_workflow_execution(execution_id=missing, name="u"),
    }
    with pytest.raises(SDKError) as err:
        calls[call]()
    assert err.value.status_code == 404
    assert missing in err.value.body


def test_an_id_no_execution_can_have_is_404_not_500(client: Mistral) -> None:
    with pytest.raises(SDKError) as err:
        client.workflows.executions.cancel_workflow_execution(execution_id="has space")
    assert err.value.status_code == 404


# --- signals --------------------------------------------------------------------------------


def test_signal_answers_202_with_a_message_and_is_recorded(client: Mistral) -> None:
    execution_id = start(client)
    reply = client.workflows.executions.signal_workflow_execution(
        execution_id=execution_id, name="approve", input={"by": "ada"}
    )
    assert reply.message == "Signal accepted"
    signals = [e for e in stored_events(client, execution_id) if e.event_type.startswith("CUSTOM")]
    assert len(signals) == 1
    assert signals[0].attributes.custom_task_type == "runstore.signal"
    assert signals[0].attributes.payload.value == {"signal_name": "approve", "input": {"by": "ada"}}


def test_signal_to_a_closed_execution_is_409(client: Mistral) -> None:
    execution_id = start(client)
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    with pytest.raises(SDKError) as err:
        client.workflows.executions.signal_workflow_execution(execution_id=execution_id, name="s")
    assert err.value.status_code == 409


def test_signal_without_a_name_is_422_with_fastapi_details(module_stack: Stack) -> None:
    execution_id = start(Mistral(api_key="test-key", server_url=module_stack.api_url))
    reply = httpx.post(
        f"{module_stack.api_url}/v1/workflows/executions/{execution_id}/signals",
        headers={"Authorization": "Bearer test-key"},
        json={"input": {"a": 1}},
    )
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["loc"] == ["body", "name"]


# --- reset ----------------------------------------------------------------------------------


def test_reset_answers_204_and_opens_a_new_run(client: Mistral) -> None:
    execution_id = start(client)
    before = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    client.workflows.executions.reset_workflow(
        execution_id=execution_id, event_id=1, reason="try again"
    )
    after = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert after.status == "RUNNING"
    assert after.run_id != before.run_id


def test_reset_to_a_point_outside_the_history_is_400(client: Mistral) -> None:
    execution_id = start(client)
    with pytest.raises(SDKError) as err:
        client.workflows.executions.reset_workflow(execution_id=execution_id, event_id=99)
    assert err.value.status_code == 400
    assert "invalid_reset_point" in err.value.body


def test_reset_with_event_id_zero_is_422(client: Mistral) -> None:
    execution_id = start(client)
    with pytest.raises(HTTPValidationError) as err:
        client.workflows.executions.reset_workflow(execution_id=execution_id, event_id=0)
    assert err.value.data.detail is not None
    assert list(err.value.data.detail[0].loc) == ["body", "event_id"]


# --- batches --------------------------------------------------------------------------------


def test_batch_cancel_reports_each_execution(client: Mistral) -> None:
    running, closed, missing = start(client), start(client), new_id("missing")
    client.workflows.executions.terminate_workflow_execution(execution_id=closed)
    reply = client.workflows.executions.batch_cancel_workflow_executions(
        execution_ids=[running, closed, missing, running]
    )
    results = reply.results or {}
    assert set(results) == {running, closed, missing}
    assert results[running].status == "success"
    assert results[running].error is None
    assert results[closed].status == "failure"
    assert "execution_already_closed" in (results[closed].error or "")
    assert results[missing].status == "failure"
    assert "execution_not_found" in (results[missing].error or "")
    assert status_of(client, running) == "CANCELED"


def test_batch_terminate_terminates_every_execution(client: Mistral) -> None:
    ids = [start(client) for _ in range(3)]
    reply = client.workflows.executions.batch_terminate_workflow_executions(execution_ids=ids)
    assert {k: v.status for k, v in (reply.results or {}).items()} == dict.fromkeys(ids, "success")
    assert {status_of(client, i) for i in ids} == {"TERMINATED"}


def test_batch_with_no_ids_is_422(client: Mistral) -> None:
    with pytest.raises(HTTPValidationError):
        client.workflows.executions.batch_cancel_workflow_executions(execution_ids=[])


# --- queries and updates: tests/sdk/test_queries_updates.py (with a fake worker) ------------


# --- execute --------------------------------------------------------------------------------


def test_execute_carries_the_caller_as_user_and_generates_an_id(client: Mistral) -> None:
    started = client.workflows.execute_workflow(workflow_identifier="greeter")
    assert started.execution_id
    assert started.user_id == "alice"
    assert started.end_time is None
    assert started.root_execution_id == started.execution_id


def test_execute_with_wait_for_result_returns_once_the_execution_closes(
    client: Mistral, module_stack: Stack
) -> None:
    execution_id = new_id("wait")
    answers: list[Any] = []

    def execute_and_wait() -> None:
        answers.append(
            client.workflows.execute_workflow(
                workflow_identifier="greeter",
                execution_id=execution_id,
                wait_for_result=True,
                timeout_seconds=60,
            )
        )

    waiting = threading.Thread(target=execute_and_wait)
    waiting.start()

    def running() -> str:
        try:
            got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
        except SDKError as exc:
            raise AssertionError(exc) from exc
        assert got.run_id
        return got.run_id

    run_id = wait_until(running)
    assert waiting.is_alive()
    # A worker would report completion on the command topic; play its part.
    complete = {
        "type": "CompleteExecution",
        "command_id": str(uuid.uuid4()),
        "execution_id": execution_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "payload": {"run_id": run_id, "result": {"greeting": "hello"}},
    }
    _produce(module_stack, execution_id, complete)
    waiting.join(30)
    assert not waiting.is_alive()
    assert answers[0].status == "COMPLETED"
    assert answers[0].result == {"greeting": "hello"}


def test_a_result_with_nested_arrays_reaches_the_run_list_and_the_point_reads(
    client: Mistral, module_stack: Stack
) -> None:
    # FerretDB 1.x cannot store a document whose arrays nest arrays; the run row keeps
    # the result as JSON text, so such a result does not park the execution.
    execution_id = start(client, new_id("nested"))
    run_id = client.workflows.executions.get_workflow_execution(execution_id=execution_id).run_id
    result = {"m": [[1, 2], [3, [4, []]]], "empty": [[]]}
    complete = {
        "type": "CompleteExecution",
        "command_id": str(uuid.uuid4()),
        "execution_id": execution_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "payload": {"run_id": run_id, "result": result},
    }
    _produce(module_stack, execution_id, complete)

    def listed_completed() -> None:
        page = client.workflows.runs.list_runs(search=execution_id)
        assert page is not None
        assert [r.status for r in page.result.executions] == ["COMPLETED"]

    wait_until(listed_completed)
    assert client.workflows.runs.get_run(run_id=run_id).result == result
    got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert got.status == "COMPLETED" and got.result == result


def test_execute_with_wait_for_result_answers_at_the_time_limit(client: Mistral) -> None:
    started = client.workflows.execute_workflow(
        workflow_identifier="greeter", wait_for_result=True, timeout_seconds=1.0
    )
    assert started.status == "RUNNING"
    assert started.result is None


def test_execute_with_an_unusable_workflow_name_is_422(client: Mistral) -> None:
    with pytest.raises(HTTPValidationError):
        client.workflows.execute_workflow(workflow_identifier="runs")


# --- idempotency ----------------------------------------------------------------------------


def test_a_retried_execute_with_the_same_key_starts_one_execution(client: Mistral) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.workflows.execute_workflow(workflow_identifier="greeter", http_headers=key)
    again = client.workflows.execute_workflow(workflow_identifier="greeter", http_headers=key)
    assert again.execution_id == first.execution_id
    assert again.run_id == first.run_id
    assert again.status == "RUNNING"


def test_a_retried_signal_with_the_same_key_is_applied_once(client: Mistral) -> None:
    execution_id = start(client)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    for _ in range(3):
        client.workflows.executions.signal_workflow_execution(
            execution_id=execution_id, name="ping", http_headers=key
        )
    client.workflows.executions.signal_workflow_execution(execution_id=execution_id, name="ping")
    signals = [e for e in stored_events(client, execution_id) if e.event_type.startswith("CUSTOM")]
    assert len(signals) == 2


def test_a_retried_cancel_with_the_same_key_succeeds_again(client: Mistral) -> None:
    execution_id = start(client)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    client.workflows.executions.cancel_workflow_execution(
        execution_id=execution_id, http_headers=key
    )
    # The first answer was lost, say: the retry gets the same answer, not a 409.
    client.workflows.executions.cancel_workflow_execution(
        execution_id=execution_id, http_headers=key
    )
    with pytest.raises(SDKError) as err:  # a new request (no key) is a new command
        client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    assert err.value.status_code == 409


# --- helpers ---------------------------------------------------------------------------------


def _produce(stack: Stack, key: str, value: dict[str, Any]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.env["RUNSTORE_KAFKA_BOOTSTRAP"])
        await producer.start()
        try:
            await producer.send_and_wait(
                f"{stack.env['RUNSTORE_TOPIC_PREFIX']}workflows.commands",
                json.dumps(value).encode(),
                key=key.encode(),
            )
        finally:
            await producer.stop()

    asyncio.run(send())
