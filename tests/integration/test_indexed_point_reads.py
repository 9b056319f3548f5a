"""Point reads answered from the API's run list index through the real stack (FerretDB, so
the index is on): a read right after a command shows it whether or not the index has
folded it yet (the commit probe), the answer came from the index (the
`runstore_api_point_reads_total{path="index"}` counter), and in separate-users mode
another user's key still gets 404 for the same reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from mistralai.client import Mistral

from tests.support.eventually import wait_until
from tests.support.sdk import status_of
from tests.support.stack import Stack, StackWith


@pytest.fixture(scope="module")
def separate_stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(RUNSTORE_API_ACCESS_MODE="separate") as stack:
        yield stack


def metric(url: str, line_start: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[1])
    return 0.0


def from_index(url: str) -> float:
    return metric(url, 'runstore_api_point_reads_total{path="index"}')


def index_holds(url: str, client: Mistral, execution_id: str) -> None:
    """Wait until the index is ready and lists the execution (lists then come from it)."""

    def listed() -> None:
        assert metric(url, "runstore_api_list_index_runs") >= 0
        page = client.workflows.runs.list_runs(search=execution_id)
        assert execution_id in {r.execution_id for r in page.result.executions}

    wait_until(listed, timeout=60)


def test_a_point_read_right_after_a_command_shows_it_when_answered_from_the_index(
    separate_stack: Stack,
) -> None:
    url = separate_stack.api_url
    alice = Mistral(api_key="test-key", server_url=url)
    execution_id = f"ix-{uuid.uuid4().hex[:12]}"
    started = alice.workflows.execute_workflow(
        workflow_identifier="indexed-wf", execution_id=execution_id
    )
    # Right after the execute: the start is shown (from the store's path or the index's).
    seen = alice.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert (seen.run_id, seen.status) == (started.run_id, "RUNNING")
    index_holds(url, alice, execution_id)

    before = from_index(url)
    seen = alice.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert (seen.run_id, seen.status) == (started.run_id, "RUNNING")
    run = alice.workflows.runs.get_run(run_id=started.run_id or "")
    assert (run.execution_id, run.status) == (execution_id, "RUNNING")
    assert from_index(url) - before == 2  # both answered from the index's row

    # A status change, read at once: the index may not have folded it yet, the commit
    # probe finds it.
    alice.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    before = from_index(url)
    assert (
        alice.workflows.executions.get_workflow_execution(execution_id=execution_id).status
        == "CANCELED"
    )
    assert alice.workflows.runs.get_run(run_id=started.run_id or "").status == "CANCELED"
    assert from_index(url) - before == 2


def test_another_users_key_gets_404_from_the_index_too(separate_stack: Stack) -> None:
    url = separate_stack.api_url
    alice = Mistral(api_key="test-key", server_url=url)
    bob = Mistral(api_key="bob-key", server_url=url)
    execution_id = f"ix-{uuid.uuid4().hex[:12]}"
    started = alice.workflows.execute_workflow(
        workflow_identifier="indexed-wf", execution_id=execution_id
    )
    index_holds(url, alice, execution_id)

    before = from_index(url)
    get_execution = bob.workflows.executions.get_workflow_execution
    assert status_of(lambda: get_execution(execution_id=execution_id)) == 404
    assert status_of(lambda: bob.workflows.runs.get_run(run_id=started.run_id or "")) == 404
    assert from_index(url) - before == 2  # the index answered; the owner check refused
    assert (
        status_of(
            lambda: bob.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
        )
        == 404
    )
    # Alice still sees it, unchanged by bob's tries.
    assert (
        alice.workflows.executions.get_workflow_execution(execution_id=execution_id).status
        == "RUNNING"
    )
