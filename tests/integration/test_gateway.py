"""The gateway when the engine is away, and retries that go the whole way round."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tests.support.eventually import wait_until
from tests.support.stack import Stack, StackWith


@pytest.fixture
def impatient_stack(stack_with: StackWith) -> Iterator[Stack]:
    """A stack whose API waits 2 s for the engine before answering 504."""
    with stack_with(RUNSTORE_API_COMMAND_TIMEOUT_SECONDS="2") as stack:
        yield stack


def test_a_silent_engine_gives_504_and_the_command_applies_later(impatient_stack: Stack) -> None:
    client = Mistral(api_key="test-key", server_url=impatient_stack.api_url)
    running = client.workflows.execute_workflow(workflow_identifier="wf").execution_id
    impatient_stack.stop("engine")

    execution_id = f"late-{uuid.uuid4().hex[:8]}"
    key = {"Idempotency-Key": uuid.uuid4().hex}
    with pytest.raises(SDKError) as err:
        client.workflows.execute_workflow(
            workflow_identifier="wf", execution_id=execution_id, http_headers=key
        )
    assert err.value.status_code == 504
    assert "may still be applied" in err.value.body
    with pytest.raises(SDKError) as err:
        client.workflows.executions.cancel_workflow_execution(execution_id=running)
    assert err.value.status_code == 504

    impatient_stack.start("engine")

    def applied() -> None:
        try:
            got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
        except SDKError as exc:
            raise AssertionError(exc) from exc
        assert got.status == "RUNNING"
        assert (
            client.workflows.executions.get_workflow_execution(execution_id=running).status
            == "CANCELED"
        )

    wait_until(applied, timeout=60)
    # The client retries with its key: same execution, same run, no conflict.
    again = client.workflows.execute_workflow(
        workflow_identifier="wf", execution_id=execution_id, http_headers=key
    )
    first = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert again.run_id == first.run_id


def test_a_retried_signal_reaching_the_engine_twice_is_applied_once(stack: Stack) -> None:
    client = Mistral(api_key="test-key", server_url=stack.api_url)
    execution_id = client.workflows.execute_workflow(workflow_identifier="wf").execution_id
    key = {"Idempotency-Key": uuid.uuid4().hex}
    client.workflows.executions.signal_workflow_execution(
        execution_id=execution_id, name="once", http_headers=key
    )
    stack.stop("api")  # a fresh API remembers no outcome: the retry goes to the engine
    stack.start("api")
    client.workflows.executions.signal_workflow_execution(
        execution_id=execution_id, name="once", http_headers=key
    )
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    with client.workflows.executions.stream(
        execution_id=execution_id, event_source="DATABASE"
    ) as stream:
        types = [item.data.data.event_type for item in stream]
    assert types == [
        "WORKFLOW_EXECUTION_STARTED",
        "CUSTOM_TASK_COMPLETED",
        "WORKFLOW_EXECUTION_CANCELED",
    ]
