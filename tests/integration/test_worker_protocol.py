"""The worker protocol on the real engine (Kafka + the MongoDB-protocol server): the test
plays the worker, publishing CompleteWorkflowTask commands, and checks the commits, the
tasks and the commands the engine derives for other executions (docs/worker-protocol.md).
"""

from __future__ import annotations

import json
from typing import Any

from services.common.commit_log import commit_from_doc
from tests.support.eventually import assert_eventually
from tests.support.kafka import command, commits_of, produce, read_topic, start, topic
from tests.support.stack import Stack


def event_types(commits: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for c in commits for e in c["events"]]


async def commits_until(env: dict[str, str], execution_id: str, count: int) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]]:
        found = [
            commit_from_doc(doc).model_dump(mode="json")
            for doc in await commits_of(env, execution_id)
        ]
        assert len(found) >= count, event_types(found)
        return found

    return await assert_eventually(enough, timeout=30)


def workflow_task(
    execution_id: str, run_id: str, task_seq: int, *steps: dict[str, Any], command_id: str
) -> dict[str, Any]:
    return command(
        "CompleteWorkflowTask",
        execution_id,
        command_id,
        run_id=run_id,
        task_seq=task_seq,
        worker_id="test-worker",
        steps=list(steps),
    )


async def test_a_parent_starts_a_child_hears_its_result_and_a_repeated_task_applies_once(
    engine: Stack,
) -> None:
    env = engine.env
    bootstrap = env["RUNSTORE_KAFKA_BOOTSTRAP"]
    parent_start = start("parent-1", "p-start")
    parent_start["payload"]["deployment_name"] = "blue"
    await produce(bootstrap, topic(env, "commands"), [("parent-1", parent_start)])
    (first,) = await commits_until(env, "parent-1", 1)
    run_id = first["run_id"]

    activity = {"kind": "activity", "activity_id": "1", "activity_name": "reserve"}
    advance = workflow_task(
        "parent-1",
        run_id,
        1,
        {**activity, "stage": "started", "input": {"sku": "A"}},
        {**activity, "stage": "completed", "result": {"ok": True}},
        {"kind": "start_child", "child_execution_id": "child-1", "workflow_name": "ship"},
        command_id="p-task-1",
    )
    # The same workflow task twice (a producer retry): one commit, one child start.
    await produce(bootstrap, topic(env, "commands"), [("parent-1", advance), ("parent-1", advance)])
    # The engine derives the child's StartWorkflow; the child's start is reported back.
    (child_started,) = await commits_until(env, "child-1", 1)
    started = child_started["events"][0]
    assert started["parent_execution_id"] == "parent-1"
    assert started["root_execution_id"] == "parent-1"
    assert started["attributes"]["parent_run_id"] == run_id
    assert started["attributes"]["deployment_name"] == "blue"  # the parent's
    assert child_started["command_id"] == "parent-1:2:3:child"
    parent = await commits_until(env, "parent-1", 3)
    assert event_types(parent) == [
        "WORKFLOW_EXECUTION_STARTED",
        "WORKFLOW_TASK_COMPLETED",
        "ACTIVITY_TASK_STARTED",
        "ACTIVITY_TASK_COMPLETED",
        "CHILD_WORKFLOW_INITIATED",
        "CHILD_WORKFLOW_STARTED",
    ]

    # The child's code completes: the parent hears the result.
    done = workflow_task(
        "child-1",
        child_started["run_id"],
        1,
        {"kind": "complete", "result": {"shipped": True}},
        command_id="c-task-1",
    )
    await produce(bootstrap, topic(env, "commands"), [("child-1", done)])
    parent = await commits_until(env, "parent-1", 4)
    closed = parent[3]["events"][0]
    assert closed["type"] == "CHILD_WORKFLOW_CLOSED"
    assert closed["attributes"]["status"] == "COMPLETED"
    assert closed["attributes"]["result"]["value"] == {"shipped": True}

    # Tasks: one run task per input event, all routed to the parent's deployment. A
    # re-published commit publishes its tasks again (at least once; workers dedupe by
    # task_id), so they are compared by task id.
    def parent_tasks(records: list[Any]) -> list[dict[str, Any]]:
        tasks = {t["task_id"]: t for t in (json.loads(r.value) for r in records)}
        return sorted(
            (t for t in tasks.values() if t["execution_id"] == "parent-1"), key=lambda t: t["seq"]
        )

    records = await read_topic(
        bootstrap, topic(env, "tasks"), lambda rs: len(parent_tasks(rs)) >= 3
    )
    tasks = parent_tasks(records)
    assert [(t["kind"], t["seq"], t["deployment_name"]) for t in tasks] == [
        ("run", 1, "blue"),
        ("run", 3, "blue"),
        ("run", 4, "blue"),
    ]
    outcomes = await read_topic(
        bootstrap,
        topic(env, "outcomes"),
        lambda rs: sum(json.loads(r.value)["command_id"] == "p-task-1" for r in rs) >= 2,
    )
    repeated = [json.loads(r.value) for r in outcomes]
    assert {(o["accepted"], o["seq"]) for o in repeated if o["command_id"] == "p-task-1"} == {
        (True, 2)
    }


async def test_a_stale_task_is_refused_and_closing_a_parent_terminates_its_child(
    engine: Stack,
) -> None:
    env = engine.env
    bootstrap = env["RUNSTORE_KAFKA_BOOTSTRAP"]
    await produce(bootstrap, topic(env, "commands"), [("mom", start("mom", "m-start"))])
    (first,) = await commits_until(env, "mom", 1)
    run_id = first["run_id"]
    child = {"kind": "start_child", "child_execution_id": "kid", "workflow_name": "wf"}
    await produce(
        bootstrap,
        topic(env, "commands"),
        [("mom", workflow_task("mom", run_id, 1, child, command_id="m-1"))],
    )
    await commits_until(env, "mom", 3)  # INITIATED, then the child's STARTED report
    stale = workflow_task("mom", run_id, 1, {"kind": "complete"}, command_id="m-stale")
    finish = workflow_task("mom", run_id, 3, {"kind": "complete"}, command_id="m-2")
    await produce(bootstrap, topic(env, "commands"), [("mom", stale), ("mom", finish)])
    outcomes = await read_topic(
        bootstrap,
        topic(env, "outcomes"),
        lambda rs: {"m-stale", "m-2"} <= {json.loads(r.value)["command_id"] for r in rs},
    )
    by_id = {json.loads(r.value)["command_id"]: json.loads(r.value) for r in outcomes}
    assert by_id["m-stale"]["code"] == "stale_workflow_task"
    assert by_id["m-2"]["accepted"] is True
    kid = await commits_until(env, "kid", 2)
    assert event_types(kid) == ["WORKFLOW_EXECUTION_STARTED", "WORKFLOW_EXECUTION_TERMINATED"]
    assert kid[1]["command_id"] == "mom:4:1:close-child:kid"
