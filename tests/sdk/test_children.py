"""A child tree started from workflow code lists under its root (the test plays the worker)."""

from __future__ import annotations

import asyncio
import uuid

from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tests.support.eventually import wait_until
from tests.support.kafka import command, produce
from tests.support.stack import Stack


def test_children_started_by_workflow_tasks_list_under_their_root(module_stack: Stack) -> None:
    client = Mistral(api_key="test-key", server_url=module_stack.api_url)
    env = module_stack.env
    root = f"root-{uuid.uuid4().hex[:8]}"
    run_id = client.workflows.execute_workflow(workflow_identifier="fan-out", execution_id=root)
    run = client.workflows.executions.get_workflow_execution(execution_id=root).run_id
    assert run_id.execution_id == root and run

    def start_children(parent: str, parent_run: str, children: list[str]) -> None:
        steps = [
            {"kind": "start_child", "child_execution_id": c, "workflow_name": "leaf"}
            for c in children
        ]
        task = command("CompleteWorkflowTask", parent, run_id=parent_run, task_seq=1, steps=steps)
        topic = f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.commands"
        asyncio.run(produce(env["RUNSTORE_KAFKA_BOOTSTRAP"], topic, [(parent, task)]))

    start_children(root, run, [f"{root}-a", f"{root}-b"])

    # A grandchild: the child's own workflow task starts it; the root stays the same.
    def child_run_id() -> str:
        try:
            got = client.workflows.executions.get_workflow_execution(execution_id=f"{root}-a")
        except SDKError as exc:
            raise AssertionError("the child has not started yet") from exc
        assert got.run_id
        return got.run_id

    start_children(f"{root}-a", wait_until(child_run_id), [f"{root}-a-1"])

    def tree() -> dict[str, str | None]:
        page = client.workflows.runs.list_runs(root_execution_id=root)
        rows = {r.execution_id: r.parent_execution_id for r in page.result.executions}
        assert len(rows) == 4, rows
        return rows

    assert wait_until(tree, timeout=60) == {
        root: None,
        f"{root}-a": root,
        f"{root}-b": root,
        f"{root}-a-1": f"{root}-a",
    }
