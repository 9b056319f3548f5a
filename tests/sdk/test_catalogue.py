"""The catalogue, deployments and workers, execution logs, traces, the events list and
metrics, driven by the official SDK against the real stack. Workers are stand-ins: the
registration library (services/common/worker_registry.py) called as the worker SDK
calls it. The stack refuses unregistered names and keeps users apart (separate mode)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from pydantic import BaseModel
from pymongo import AsyncMongoClient

from schemas.registry import LogRecord, WorkerRegistration, spec_of
from services.common.worker_registry import (
    ExecutionLogShipper,
    WorkerRegistry,
)
from tests.support.eventually import wait_until
from tests.support.kafka import command, produce
from tests.support.stack import Stack, StackWith

T = TypeVar("T")


@pytest.fixture(scope="module")
def module_stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(
        RUNSTORE_API_ALLOW_UNREGISTERED="false", RUNSTORE_API_ACCESS_MODE="separate"
    ) as stack:
        yield stack


@pytest.fixture
def client(module_stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=module_stack.api_url)


@pytest.fixture
def bob(module_stack: Stack) -> Mistral:
    return Mistral(api_key="bob-key", server_url=module_stack.api_url)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def with_db(stack: Stack, work: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            stack.env["RUNSTORE_MONGO_URL"], tz_aware=True
        )
        try:
            return await work(mongo[stack.env["RUNSTORE_MONGO_DATABASE"]])
        finally:
            await mongo.close()

    return asyncio.run(go())


class Order(BaseModel):
    order_id: str
    amount: int


class Invoice(BaseModel):
    total: int


class InvoiceWorkflow:
    async def run(self, order: Order) -> Invoice:
        """Bill one order.

        More words."""
        return Invoice(total=order.amount)


def registration(
    deployment: str, names: list[str], interval: float = 60.0, worker: str | None = None
) -> WorkerRegistration:
    return WorkerRegistration(
        worker_id=worker or uid("worker"),
        deployment_name=deployment,
        host="test-host",
        pid=4242,
        version="1.2.3",
        workflows=[
            spec_of(n, InvoiceWorkflow.run, display_name=f"Display {n}", tags=["billing"])
            for n in names
        ],
        heartbeat_interval_seconds=interval,
    )


def register(stack: Stack, reg: WorkerRegistration) -> None:
    with_db(stack, lambda db: WorkerRegistry(db).register(reg))


def complete(stack: Stack, client: Mistral, execution_id: str) -> None:
    run_id = client.workflows.executions.get_workflow_execution(execution_id=execution_id).run_id
    cmd = command("CompleteExecution", execution_id, run_id=run_id, result={"ok": True})
    asyncio.run(
        produce(
            stack.env["RUNSTORE_KAFKA_BOOTSTRAP"],
            f"{stack.env['RUNSTORE_TOPIC_PREFIX']}workflows.commands",
            [(execution_id, cmd)],
        )
    )
    wait_until(
        lambda: _assert_status(client, execution_id, "COMPLETED"),
        timeout=30,
    )


def _assert_status(client: Mistral, execution_id: str, status: str) -> None:
    got = client.workflows.executions.get_workflow_execution(execution_id=execution_id).status
    assert got == status


# --- catalogue ------------------------------------------------------------------------


def test_registered_workflows_are_listed_paged_and_described(
    module_stack: Stack, client: Mistral
) -> None:
    prefix = uid("cat")
    names = [f"{prefix}-{i}" for i in range(3)]
    register(module_stack, registration(uid("dep"), names))

    first = client.workflows.get_workflows(search=prefix, limit=2)
    assert first is not None
    assert [w.name for w in first.result.workflows] == names[:2]
    assert first.result.next_cursor
    second = first.next()
    assert second is not None
    assert [w.name for w in second.result.workflows] == names[2:]
    assert second.result.next_cursor is None

    got = client.workflows.get_workflow(workflow_identifier=names[0]).workflow
    assert (got.display_name, got.description, got.active) == (
        f"Display {names[0]}",
        "Bill one order.",
        True,
    )
    assert got.tags == ["billing"]

    regs = client.workflows.get_workflow_registrations(workflow_name=names[0], with_workflow=True)
    (reg,) = regs.workflow_registrations
    assert reg.definition.input_schema["properties"]["amount"]["type"] == "integer"
    assert reg.definition.output_schema is not None
    assert reg.definition.output_schema["properties"]["total"]["type"] == "integer"
    assert reg.workflow is not None and reg.workflow.name == names[0]
    one = client.workflows.get_workflow_registration(workflow_registration_id=reg.id)
    assert one.workflow_registration.active is True


def test_an_unknown_or_archived_workflow_cannot_be_executed_over_http(
    module_stack: Stack, client: Mistral
) -> None:
    name = uid("arch")
    register(module_stack, registration(uid("dep"), [name]))
    with pytest.raises(SDKError) as unknown:
        client.workflows.execute_workflow(workflow_identifier=uid("typo"), input={})
    assert unknown.value.status_code == 404
    assert "workflow_not_found" in unknown.value.body

    archived = client.workflows.archive_workflow(workflow_identifier=name).workflow
    assert archived.archived is True
    with pytest.raises(SDKError) as refused:
        client.workflows.execute_workflow(workflow_identifier=name, input={})
    assert refused.value.status_code == 409
    assert "workflow_archived" in refused.value.body
    listed = client.workflows.get_workflows(search=name, archived=True)
    assert listed is not None and [w.name for w in listed.result.workflows] == [name]

    assert client.workflows.unarchive_workflow(workflow_identifier=name).workflow.archived is False
    started = client.workflows.execute_workflow(workflow_identifier=name, input={})
    assert started.status == "RUNNING"

    bulk = client.workflows.bulk_archive_workflows(workflow_ids=[name, uid("nope")])
    assert [w.name for w in bulk.archived] == [name]
    assert bulk.errored is not None and len(bulk.errored) == 1
    back = client.workflows.bulk_unarchive_workflows(workflow_ids=[name])
    assert [w.archived for w in back.unarchived] == [False]


def test_catalogue_tags_reach_runs_started_over_http(module_stack: Stack, client: Mistral) -> None:
    name = uid("tags")
    tag = uid("t")
    register(module_stack, registration(uid("dep"), [name]))
    client.workflows.add_workflow_tags(workflow_identifier=name, tags=[tag])
    updated = client.workflows.update_workflow(
        workflow_identifier=name, display_name="Renamed", description="Edited"
    ).workflow
    assert (updated.display_name, updated.description) == ("Renamed", "Edited")
    assert set(updated.tags or ()) == {"billing", tag}

    started = client.workflows.execute_workflow(workflow_identifier=name, input={})

    def tagged() -> None:
        page = client.workflows.runs.list_runs(workflow_tags=[tag])
        assert [e.execution_id for e in page.result.executions] == [started.execution_id]

    wait_until(tagged, timeout=30)
    # A re-registration keeps what users edited.
    register(module_stack, registration(uid("dep"), [name]))
    again = client.workflows.get_workflow(workflow_identifier=name).workflow
    assert again.display_name == "Renamed" and tag in (again.tags or ())


def test_execute_by_registration_runs_on_its_deployment(
    module_stack: Stack, client: Mistral
) -> None:
    name, deployment = uid("byreg"), uid("dep")
    register(module_stack, registration(deployment, [name]))
    regs = client.workflows.get_workflow_registrations(workflow_name=name)
    started = client.workflows.execute_workflow_registration(
        workflow_registration_id=regs.workflow_registrations[0].id, input={"n": 1}
    )
    assert started.workflow_name == name
    assert started.deployment_name == deployment  # type: ignore[union-attr]


# --- deployments and workers ----------------------------------------------------------


class HeartbeatingWorker:
    """A stand-in worker process: heartbeats on its own thread until stopped."""

    def __init__(self, stack: Stack, reg: WorkerRegistration) -> None:
        self.stack = stack
        self.reg = reg
        self.directives: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        wait_until(lambda: _assert(bool(self.directives)), timeout=10)  # registered

    def _main(self) -> None:
        async def go(db: Any) -> None:
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._ready.set()

            async def seen(directive: Any) -> None:
                self.directives.append(directive)

            await WorkerRegistry(db).run_heartbeats(self.reg, seen, self._stop)

        with_db(self.stack, go)

    def stop(self) -> None:
        assert self._stop is not None and self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_live_workers_are_listed_and_vanish_after_they_stop(
    module_stack: Stack, client: Mistral
) -> None:
    deployment = uid("dep")
    worker = HeartbeatingWorker(module_stack, registration(deployment, [uid("wf")], interval=0.3))
    crashed = registration(deployment, [uid("wf")], interval=0.3)
    register(module_stack, crashed)  # registers once and never beats again

    listed = client.workflows.deployments.list_deployment_workers(name=deployment)
    names = {w.name for w in listed.workers}
    assert worker.reg.worker_id in names
    detail = client.workflows.deployments.get_deployment(name=deployment)
    assert worker.reg.worker_id in {w.name for w in detail.workers}

    def crashed_gone() -> None:
        live = client.workflows.deployments.list_deployment_workers(name=deployment)
        assert [w.name for w in live.workers] == [worker.reg.worker_id]

    wait_until(crashed_gone, timeout=10)
    worker.stop()

    def all_gone() -> None:
        assert client.workflows.deployments.list_deployment_workers(name=deployment).workers == []

    wait_until(all_gone, timeout=10)


def test_deployment_lifecycle_directs_its_workers(module_stack: Stack, client: Mistral) -> None:
    deployments = client.workflows.deployments
    name = uid("dep")
    created = deployments.create_deployment(name=name, spec={"github_url": "https://x/y"})
    assert created.name == name and created.stopped is False
    with pytest.raises(SDKError) as twice:
        deployments.create_deployment(name=name, spec={})
    assert twice.value.status_code == 409

    worker = HeartbeatingWorker(module_stack, registration(name, [uid("wf")], interval=0.2))
    try:
        assert deployments.stop_deployment(name=name).stopped is True
        wait_until(lambda: _assert(worker.directives[-1].stopped), timeout=10)
        assert deployments.start_deployment(name=name).stopped is False
        wait_until(lambda: _assert(not worker.directives[-1].stopped), timeout=10)
        deployments.restart_deployment(name=name)
        wait_until(lambda: _assert(worker.directives[-1].restart_generation == 1), timeout=10)

        listed = deployments.list_deployments(search=name)
        assert [d.name for d in listed.deployments] == [name]
        assert listed.deployments[0].active_worker_count == 1
        deployments.update_deployment(name=name, spec={"github_url": "https://x/z"})
        with pytest.raises(SDKError) as busy:
            deployments.delete_deployment(name=name)
        assert busy.value.status_code == 409
    finally:
        worker.stop()
    deployments.delete_deployment(name=name)
    with pytest.raises(SDKError) as gone:
        deployments.get_deployment(name=name)
    assert gone.value.status_code == 404


def test_hosted_code_operations_answer_501(module_stack: Stack, client: Mistral) -> None:
    name = uid("dep")
    client.workflows.deployments.create_deployment(name=name, spec={})
    for call in (
        lambda: client.workflows.deployments.get_deployment_archive(name=name),
        lambda: client.workflows.deployments.unharden_deployment(deployment_id=name),
    ):
        with pytest.raises(SDKError) as refused:
            call()
        assert refused.value.status_code == 501
        assert "not_supported" in refused.value.body


def _assert(condition: bool) -> None:
    assert condition


# --- logs, traces, events, metrics ----------------------------------------------------


def ship(stack: Stack, execution_id: str, deployment: str, lines: list[str]) -> None:
    async def go(db: Any) -> None:
        shipper = ExecutionLogShipper(db, worker_id="w-logs", deployment_name=deployment)
        base = datetime.now(UTC)
        for i, line in enumerate(lines):
            shipper.add(
                LogRecord(
                    execution_id=execution_id,
                    timestamp=base + timedelta(microseconds=i),
                    body=line,
                    workflow_name="logged",
                )
            )
        await shipper.flush()

    with_db(stack, go)


def test_execution_log_lines_come_back_in_order(module_stack: Stack, client: Mistral) -> None:
    name, deployment = uid("logged"), uid("dep")
    register(module_stack, registration(deployment, [name]))
    execution_id = client.workflows.execute_workflow(
        workflow_identifier=name, input={}
    ).execution_id
    lines = [f"line {i}" for i in range(150)]
    ship(module_stack, execution_id, deployment, lines[:120])
    ship(module_stack, execution_id, deployment, lines[120:])

    executions = client.workflows.executions
    first = executions.get_workflow_execution_logs(execution_id=execution_id, limit=100)
    assert first.next_cursor
    rest = executions.get_workflow_execution_logs(
        execution_id=execution_id, limit=100, cursor=first.next_cursor
    )
    assert [r.body for r in first.results + rest.results] == lines
    assert rest.next_cursor is None
    newest = executions.get_workflow_execution_logs(
        execution_id=execution_id, order="desc", limit=1
    )
    assert [r.body for r in newest.results] == ["line 149"]

    complete(module_stack, client, execution_id)
    with executions.stream_workflow_execution_logs(execution_id=execution_id) as stream:
        streamed = [item.data.body for item in stream]  # type: ignore[union-attr]
    assert streamed == lines
    with executions.stream_workflow_execution_logs(
        execution_id=execution_id, last_event_id=first.next_cursor
    ) as stream:
        resumed = [item.data.body for item in stream]  # type: ignore[union-attr]
    assert resumed == lines[100:]

    page = client.workflows.deployments.get_deployment_logs(name=deployment, limit=100)
    assert [r.body for r in page.results] == lines[:100]
    page2 = client.workflows.deployments.get_deployment_logs(
        name=deployment, limit=100, cursor=page.next_cursor
    )
    assert [r.body for r in page2.results] == lines[100:]
    with client.workflows.deployments.stream_deployment_logs(
        name=deployment, last_event_id=page.next_cursor
    ) as stream:
        got: list[str] = []
        for item in stream:
            got.append(item.data.body)  # type: ignore[union-attr]
            if len(got) == 50:
                break
    assert got == lines[100:]


def test_traces_events_list_and_metrics_come_from_the_history(
    module_stack: Stack, client: Mistral
) -> None:
    name = uid("traced")
    register(module_stack, registration(uid("dep"), [name]))
    ids = [
        client.workflows.execute_workflow(workflow_identifier=name, input={"i": i}).execution_id
        for i in range(3)
    ]
    for execution_id in ids[:2]:
        complete(module_stack, client, execution_id)
    executions = client.workflows.executions
    done = ids[0]

    info = executions.get_workflow_execution_trace_info(execution_id=done)
    assert info.has_trace_data is False
    summary = executions.get_workflow_execution_trace_summary(execution_id=done)
    assert summary.status == "COMPLETED"
    assert summary.span_tree is not None and summary.span_tree.end_time_unix_nano is not None
    assert [e.name for e in summary.span_tree.events] == [
        "WORKFLOW_EXECUTION_STARTED",
        "WORKFLOW_EXECUTION_COMPLETED",
    ]
    events = executions.get_workflow_execution_trace_events(execution_id=done)
    assert [e.name for e in events.events or []] == [  # type: ignore[union-attr]
        "WORKFLOW_EXECUTION_STARTED",
        "WORKFLOW_EXECUTION_COMPLETED",
    ]
    otel = executions.get_workflow_execution_trace_otel(execution_id=done)
    assert otel.data_source == "runstore-history"
    assert otel.otel_trace_data is not None and otel.otel_trace_data.batches

    first = client.workflows.events.get_workflow_events(workflow_exec_id=done, limit=1)
    assert [e.event_type for e in first.events] == ["WORKFLOW_EXECUTION_STARTED"]
    second = client.workflows.events.get_workflow_events(
        workflow_exec_id=done, limit=1, cursor=first.next_cursor
    )
    assert [e.event_type for e in second.events] == ["WORKFLOW_EXECUTION_COMPLETED"]
    assert second.next_cursor is None  # the last page

    metrics = client.workflows.metrics.get_workflow_metrics(workflow_name=name)
    assert metrics.execution_count.value == 3
    assert metrics.success_count.value == 2
    assert metrics.error_count.value == 0


def test_another_users_execution_is_not_found_on_every_new_route(
    module_stack: Stack, client: Mistral, bob: Mistral
) -> None:
    name = uid("mine")
    register(module_stack, registration(uid("dep"), [name]))
    execution_id = client.workflows.execute_workflow(
        workflow_identifier=name, input={}
    ).execution_id
    ex = bob.workflows.executions
    calls: list[Callable[[], Any]] = [
        lambda: ex.get_workflow_execution_logs(execution_id=execution_id),
        lambda: ex.get_workflow_execution_trace_info(execution_id=execution_id),
        lambda: ex.get_workflow_execution_trace_otel(execution_id=execution_id),
        lambda: ex.get_workflow_execution_trace_summary(execution_id=execution_id),
        lambda: ex.get_workflow_execution_trace_events(execution_id=execution_id),
        lambda: bob.workflows.events.get_workflow_events(workflow_exec_id=execution_id),
        lambda: bob.workflows.events.get_workflow_events(root_workflow_exec_id=execution_id),
    ]
    for call in calls:
        with pytest.raises(SDKError) as hidden:
            call()
        assert hidden.value.status_code == 404
    with (
        pytest.raises(SDKError) as hidden_stream,
        ex.stream_workflow_execution_logs(execution_id=execution_id) as stream,
    ):
        list(stream)
    assert hidden_stream.value.status_code == 404
    # Alice herself sees it.
    assert (
        client.workflows.executions.get_workflow_execution_trace_info(execution_id=execution_id)
        is not None
    )


def test_whoami_names_the_namespace(module_stack: Stack) -> None:
    answer = httpx.get(
        f"{module_stack.api_url}/v1/workflows/workers/whoami",
        headers={"Authorization": "Bearer test-key"},
    )
    assert answer.status_code == 200
    assert answer.json()["namespace"] == "default"
    assert answer.json()["scheduler_url"].startswith("kafka://")


def test_openapi_declares_the_new_routes(module_stack: Stack) -> None:
    spec = httpx.get(f"{module_stack.api_url}/openapi.json").json()
    logs = spec["paths"]["/v1/workflows/executions/{execution_id}/logs/stream"]["get"]
    assert "text/event-stream" in logs["responses"]["200"]["content"]
    assert "404" in logs["responses"]
    archive = spec["paths"]["/v1/workflows/deployments/{name}/archive"]["get"]
    assert "501" in archive["responses"]


def test_get_workflows_filters_by_deployment_tags_and_liveness(
    module_stack: Stack, client: Mistral
) -> None:
    prefix = uid("flt")
    live_dep, gone_dep = uid("dep"), uid("dep")
    register(module_stack, registration(live_dep, [f"{prefix}-live"]))
    register(module_stack, registration(gone_dep, [f"{prefix}-gone"], interval=0.1))
    tag = uid("t")
    client.workflows.add_workflow_tags(workflow_identifier=f"{prefix}-live", tags=[tag])

    def names(**filters: Any) -> list[str]:
        page = client.workflows.get_workflows(search=prefix, **filters)
        assert page is not None
        return [w.name for w in page.result.workflows]

    assert names(deployment_name=[gone_dep]) == [f"{prefix}-gone"]
    assert names(tags=[tag, "billing"]) == [f"{prefix}-live"]

    def only_live() -> None:
        assert names(deployment_status="active") == [f"{prefix}-live"]
        assert names(deployment_status="inactive") == [f"{prefix}-gone"]

    wait_until(only_live, timeout=10)
    assert names(order="desc") == [f"{prefix}-live", f"{prefix}-gone"]
    listed = client.workflows.deployments.list_deployments(workflow_name=f"{prefix}-live")
    assert [d.name for d in listed.deployments] == [live_dep]
