"""The API's in-memory run list index (RUNSTORE_API_LIST_INDEX=auto → memory on the test
FerretDB) through the real stack: it follows the events topic (a new run is listed, a status
change shows), and an API started after runs were projected loads them from the store and
catches up from the projector's offsets, so it lists what a store-querying API (an index
capped below the run count, hence dropped) lists."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from mistralai.client import Mistral

from tests.support.eventually import wait_until
from tests.support.kafka import command, publish
from tests.support.servers import free_port
from tests.support.stack import Stack


def index_runs(url: str) -> int:
    """The API's runstore_api_list_index_runs gauge (-1: not ready or off)."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("runstore_api_list_index_runs "):
            return int(float(line.split()[1]))
    raise AssertionError("no runstore_api_list_index_runs gauge")


def rows(client: Mistral, **filters: Any) -> list[tuple[str, str]]:
    page = client.workflows.runs.list_runs(page_size=1000, **filters)
    assert page is not None
    return [(r.run_id, r.status) for r in page.result.executions]


def test_the_index_lists_a_new_run_and_its_status_changes(stack: Stack) -> None:
    client = Mistral(api_key="test-key", server_url=stack.api_url)
    wait_until(lambda: _assert(index_runs(stack.api_url) >= 0), timeout=60)
    tag = uuid.uuid4().hex[:8]
    started = client.workflows.execute_workflow(
        workflow_identifier=f"wf-{tag}", execution_id=f"{tag}-a"
    )
    run_id = started.run_id
    wait_until(
        lambda: _assert(rows(client, workflow_identifier=f"wf-{tag}") == [(run_id, "RUNNING")])
    )
    client.workflows.executions.cancel_workflow_execution(execution_id=f"{tag}-a")
    wait_until(
        lambda: _assert(rows(client, workflow_identifier=f"wf-{tag}") == [(run_id, "CANCELED")])
    )
    assert rows(client, status="CANCELED", workflow_identifier=f"wf-{tag}") == [
        (run_id, "CANCELED")
    ]
    assert rows(client, status="RUNNING", workflow_identifier=f"wf-{tag}") == []
    assert index_runs(stack.api_url) >= 1  # the answers came from the index


def test_an_api_started_later_loads_the_store_and_lists_what_the_store_lists(
    stack: Stack,
) -> None:
    client = Mistral(api_key="test-key", server_url=stack.api_url)
    tag = uuid.uuid4().hex[:8]
    for i in range(12):
        client.workflows.execute_workflow(
            workflow_identifier=f"wf-{tag}-{i % 3}", execution_id=f"{tag}-{i:02d}"
        )
    stack.stop("api")  # runs change while no API follows the topic
    for i in range(12):
        if i % 2 == 0:
            _publish_cancel(stack, f"{tag}-{i:02d}")
    store_port = free_port()
    # An index capped below the runs there are is dropped: that API lists from the store.
    capped = {"RUNSTORE_API_LIST_INDEX": "memory", "RUNSTORE_API_LIST_INDEX_MAX_RUNS": "5"}
    stack.start("api", instance="store-api", api_port=store_port, env=capped)
    by_store = Mistral(api_key="test-key", server_url=stack.url_of("store-api"))

    def projected() -> None:
        listed = rows(by_store, search=tag)
        assert len(listed) == 12
        assert sorted(s for _, s in listed).count("CANCELED") == 6

    wait_until(projected, timeout=60)
    wait_until(
        lambda: _assert("LIST_INDEX_MAX_RUNS=5 runs; dropped" in stack.log_tail("store-api"))
    )
    assert index_runs(stack.url_of("store-api")) == -1
    stack.start("api")
    wait_until(lambda: _assert(index_runs(stack.api_url) >= 12), timeout=60)
    for filters in (
        {"search": tag},
        {"search": tag, "status": "CANCELED"},
        {"search": tag, "status": ["RUNNING", "CANCELED"], "order": "asc"},
        {"workflow_identifier": f"wf-{tag}-1"},
        {"search": tag, "sort_by": "end_time"},
    ):
        wait_until(lambda f=filters: _assert(rows(client, **f) == rows(by_store, **f)))


def _publish_cancel(stack: Stack, execution_id: str) -> None:
    publish(stack.env, [(execution_id, command("CancelExecution", execution_id, reason="x"))])


def _assert(condition: bool) -> None:
    assert condition
