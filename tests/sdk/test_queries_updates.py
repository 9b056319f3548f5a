"""Queries and updates through the official SDK against a real stack, answered by a tiny
fake worker in the test (a Kafka consumer of `workflows.tasks` that replies on
`workflows.replies` and records updates as the SDK worker would: docs/worker-protocol.md).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from services.common.kafka_io import tail_from_end
from services.common.settings import RunstoreSettings
from tests.support.eventually import wait_until
from tests.support.stack import Stack, StackWith


class FakeWorker:
    """Answers query and update tasks of workflow `approval`; ignores everything else."""

    def __init__(self, env: dict[str, str]) -> None:
        self.bootstrap = env["RUNSTORE_KAFKA_BOOTSTRAP"]
        prefix = env["RUNSTORE_TOPIC_PREFIX"]
        self.tasks, self.replies = f"{prefix}workflows.tasks", f"{prefix}workflows.replies"
        self.commands = f"{prefix}workflows.commands"
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.answered: list[dict[str, Any]] = []

    def start(self) -> None:
        self.thread.start()
        self.job = asyncio.run_coroutine_threadsafe(self._run(), self.loop)
        assert self.ready.wait(30), "the fake worker did not start"

    def stop(self) -> None:
        self.stopping.set()
        self.job.result(timeout=30)  # the loop below ends and closes its clients
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _run(self) -> None:
        settings = RunstoreSettings(kafka_bootstrap=self.bootstrap)
        consumer, _ = await tail_from_end(settings, [self.tasks], "fake-worker")
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            self.ready.set()
            while not self.stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        await self._answer(producer, json.loads(record.value))
        finally:
            await consumer.stop()
            await producer.stop()

    async def _answer(self, producer: AIOKafkaProducer, task: dict[str, Any]) -> None:
        if task["kind"] not in ("query", "update") or task["workflow_name"] != "approval":
            return
        self.answered.append(task)
        reply: dict[str, Any] = {
            "request_id": task["request_id"],
            "execution_id": task["execution_id"],
            "kind": task["kind"],
            "ok": True,
            "worker_id": "fake",
        }
        if task["kind"] == "query":
            if task["name"] == "state":
                reply["result"] = {"approved": False, "asked": task["input"]}
            else:
                reply["ok"] = False
                reply["error"] = {
                    "code": "unknown_query",
                    "message": f"no query {task['name']!r}",
                    "known_names": ["state"],
                }
        elif (task["input"] or {}).get("amount", 0) < 0:
            reply["ok"] = False
            reply["error"] = {"code": "update_rejected", "message": "amount must be >= 0"}
        else:
            # Record the update as the worker SDK does: one workflow task, command id
            # `update:{request_id}`; the API answers once the engine accepted it.
            command_id = f"update:{task['request_id']}"
            result = task["input"]["amount"] * 2
            steps = [
                {
                    "kind": "update_accepted",
                    "update_id": task["request_id"],
                    "update_name": task["name"],
                    "input": task["input"],
                },
                {"kind": "update_completed", "update_id": task["request_id"], "result": result},
            ]
            command = {
                "type": "CompleteWorkflowTask",
                "command_id": command_id,
                "execution_id": task["execution_id"],
                "issued_at": datetime.now(UTC).isoformat(),
                "payload": {
                    "run_id": task["run_id"],
                    "task_seq": max(1, task["seq"]),
                    "worker_id": "fake",
                    "steps": steps,
                },
            }
            key = task["execution_id"].encode()
            await producer.send_and_wait(self.commands, json.dumps(command).encode(), key=key)
            reply.update(result=result, command_id=command_id)
        await producer.send_and_wait(
            self.replies, json.dumps(reply).encode(), key=task["execution_id"].encode()
        )


@pytest.fixture(scope="module")
def stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(RUNSTORE_API_WORKER_TIMEOUT_SECONDS="3") as stack:
        yield stack


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[FakeWorker]:
    fake = FakeWorker(stack.env)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def client(stack: Stack, worker: FakeWorker) -> Mistral:
    return Mistral(api_key="test-key", server_url=stack.api_url)


def start(client: Mistral, workflow: str = "approval") -> str:
    execution_id = f"q-{uuid.uuid4().hex[:10]}"
    client.workflows.execute_workflow(
        workflow_identifier=workflow, execution_id=execution_id, deployment_name="blue"
    )
    return execution_id


def test_a_query_is_answered_by_the_worker(client: Mistral, worker: FakeWorker) -> None:
    execution_id = start(client)
    answer = client.workflows.executions.query_workflow_execution(
        execution_id=execution_id, name="state", input={"who": "me"}
    )
    assert answer.query_name == "state"
    assert answer.result == {"approved": False, "asked": {"who": "me"}}
    (task,) = [t for t in worker.answered if t["execution_id"] == execution_id]
    assert task["deployment_name"] == "blue"  # routed like the run's other tasks
    assert task["user_id"] == "alice"


def test_an_unknown_query_is_400_with_the_names_the_workflow_knows(client: Mistral) -> None:
    execution_id = start(client)
    with pytest.raises(SDKError) as err:
        client.workflows.executions.query_workflow_execution(execution_id=execution_id, name="nope")
    assert err.value.status_code == 400
    detail = json.loads(err.value.body)["detail"]
    assert detail.startswith("unknown_query:") and "state" in detail


@pytest.mark.parametrize("kind", ["query", "update"])
def test_no_worker_answering_in_time_is_504_with_a_message(client: Mistral, kind: str) -> None:
    execution_id = start(client, workflow="nobody-runs-this")
    executions = client.workflows.executions
    call = (
        executions.query_workflow_execution
        if kind == "query"
        else executions.update_workflow_execution
    )
    with pytest.raises(SDKError) as err:
        call(execution_id=execution_id, name="state")
    assert err.value.status_code == 504
    detail = json.loads(err.value.body)["detail"]
    assert detail.startswith("no_worker_reply:") and "'blue'" in detail


def update_events(client: Mistral, execution_id: str) -> list[Any]:
    stream = client.workflows.executions.stream(execution_id=execution_id, event_source="DATABASE")
    with stream:
        events = [item.data.data for item in stream]
    return [e for e in events if getattr(e.attributes, "custom_task_type", "") == "runstore.update"]


def test_an_update_is_recorded_then_answered(client: Mistral) -> None:
    execution_id = start(client)
    answer = client.workflows.executions.update_workflow_execution(
        execution_id=execution_id, name="raise", input={"amount": 21}
    )
    assert answer.update_name == "raise"
    assert answer.result == 42

    # Answered after the engine accepted the record: the history already holds it.
    def recorded() -> list[Any]:
        events = update_events(client, execution_id)
        assert len(events) == 2, events
        return events

    events = wait_until(recorded)
    assert [e.event_type for e in events] == ["CUSTOM_TASK_STARTED", "CUSTOM_TASK_COMPLETED"]


def test_an_update_its_validator_rejects_is_400_and_records_nothing(client: Mistral) -> None:
    execution_id = start(client)
    with pytest.raises(SDKError) as err:
        client.workflows.executions.update_workflow_execution(
            execution_id=execution_id, name="raise", input={"amount": -1}
        )
    assert err.value.status_code == 400
    assert json.loads(err.value.body)["detail"].startswith("update_rejected:")
    # A later accepted update is the first one recorded.
    client.workflows.executions.update_workflow_execution(
        execution_id=execution_id, name="raise", input={"amount": 1}
    )
    started = [e for e in update_events(client, execution_id) if e.event_type.endswith("STARTED")]
    assert len(started) == 1
    assert started[0].attributes.payload.value == {"update_name": "raise", "input": {"amount": 1}}


def test_an_update_of_a_closed_execution_is_409(client: Mistral) -> None:
    execution_id = start(client)
    client.workflows.executions.terminate_workflow_execution(execution_id=execution_id)
    with pytest.raises(SDKError) as err:
        client.workflows.executions.update_workflow_execution(
            execution_id=execution_id, name="raise", input={"amount": 1}
        )
    assert err.value.status_code == 409
