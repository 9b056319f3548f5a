"""A command travels the whole path on real servers, driven by the official SDK:
HTTP execute (or a producer on Kafka) → engine → MongoDB commit → events → projector →
read through `get_workflow_execution` and `list_runs`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tests.support.eventually import wait_until
from tests.support.stack import Stack


@pytest.fixture
def client(module_stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=module_stack.api_url)


def test_execute_then_read_it_back_running(client: Mistral) -> None:
    execution_id = f"skel-{uuid.uuid4().hex[:8]}"
    started = client.workflows.execute_workflow(
        workflow_identifier="greeter", input={"name": "Ada"}, execution_id=execution_id
    )
    assert started.execution_id == execution_id
    assert started.status == "RUNNING"
    assert started.run_id

    got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert got.status == "RUNNING"
    assert got.workflow_name == "greeter"
    assert got.root_execution_id == execution_id
    assert got.end_time is None
    assert got.user_id == "alice"

    def listed() -> None:
        page = client.workflows.runs.list_runs(workflow_identifier="greeter")
        rows = {r.execution_id: r for r in page.result.executions}
        assert execution_id in rows
        assert rows[execution_id].status == "RUNNING"
        assert rows[execution_id].run_id == started.run_id

    wait_until(listed)


def test_second_start_of_a_running_execution_is_a_conflict(client: Mistral) -> None:
    execution_id = f"skel-{uuid.uuid4().hex[:8]}"
    client.workflows.execute_workflow(workflow_identifier="greeter", execution_id=execution_id)
    with pytest.raises(SDKError) as err:
        client.workflows.execute_workflow(workflow_identifier="greeter", execution_id=execution_id)
    assert err.value.status_code == 409
    assert "execution_already_running" in err.value.body


def test_unknown_key_is_401(module_stack: Stack) -> None:
    client = Mistral(api_key="wrong", server_url=module_stack.api_url)
    with pytest.raises(SDKError) as err:
        client.workflows.executions.get_workflow_execution(execution_id="whatever")
    assert err.value.status_code == 401


async def test_producer_on_kafka_gets_the_same_result(module_stack: Stack) -> None:
    env = module_stack.env
    execution_id = f"kafka-{uuid.uuid4().hex[:8]}"
    command = {
        "type": "StartWorkflow",
        "command_id": str(uuid.uuid4()),
        "execution_id": execution_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "user_id": "billing-service",
        "payload": {"workflow_name": "invoice", "input": {"amount": 12}},
    }
    producer = AIOKafkaProducer(
        bootstrap_servers=env["RUNSTORE_KAFKA_BOOTSTRAP"], enable_idempotence=True
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.commands",
            json.dumps(command).encode(),
            key=execution_id.encode(),
        )
    finally:
        await producer.stop()

    client = Mistral(api_key="test-key", server_url=module_stack.api_url)

    def running() -> None:
        try:
            got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
        except SDKError as exc:
            raise AssertionError(str(exc)) from exc
        assert got.status == "RUNNING"
        assert got.workflow_name == "invoice"
        assert got.user_id == "billing-service"

    wait_until(running)
