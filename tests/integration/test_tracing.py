"""One trace through the real services: the services export their spans over OTLP/HTTP to
a collector the test runs (tests/support/otlp_collector.py), which keeps them in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.eventually import wait_until
from tests.support.kafka import command, produce, topic
from tests.support.otlp_collector import CollectedSpan, Collector, otlp_collector
from tests.support.servers import free_port
from tests.support.stack import Stack, StackWith

TRACED = ("engine", "projector", "worker", "api")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(stack_with: StackWith) -> Iterator[tuple[Stack, Collector]]:
    port = free_port()
    with (
        otlp_collector(port) as collector,
        stack_with(
            services=TRACED,
            # The standard variable (RUNSTORE_TRACING_ENDPOINT would win over it).
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_BSP_SCHEDULE_DELAY="100",
        ) as stack,
    ):
        yield stack, collector


def _execute(
    stack: Stack,
    execution_id: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    workflow: str = "runstore-echo",
) -> None:
    def started() -> None:
        reply = httpx.post(
            f"{stack.api_url}/v1/workflows/{workflow}/execute",
            json={"execution_id": execution_id, "input": {"n": 1}, **(body or {})},
            headers={"Authorization": "Bearer test-key", **(headers or {})},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text  # 404 until the worker registered

    wait_until(started, timeout=60)


def _one(spans: list[CollectedSpan], name: str, parent: CollectedSpan | str) -> CollectedSpan:
    parent_id = parent if isinstance(parent, str) else parent.span_id
    found = [s for s in spans if s.name == name and s.parent_span_id == parent_id]
    assert found, f"no {name!r} under {parent_id}: {[(s.name, s.parent_span_id) for s in spans]}"
    return found[0]


def _tree(spans: list[CollectedSpan], parent: str, depth: int = 0) -> str:
    lines = []
    for s in spans:
        if s.parent_span_id == parent:
            lines.append(f"{'  ' * depth}{s.name}  [{s.service}]")
            lines.append(_tree(spans, s.span_id, depth + 1))
    return "\n".join(line for line in lines if line)


def test_a_traceparent_header_continues_through_api_engine_projector_and_worker(
    traced: tuple[Stack, Collector],
) -> None:
    stack, collector = traced
    _execute(
        stack,
        "traced-1",
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
    )

    def whole_path() -> dict[str, CollectedSpan]:
        spans = collector.trace(TRACE_ID)
        http = _one(spans, "POST /v1/workflows/{workflow_identifier}/execute", CALLER_SPAN)
        execute = _one(spans, "execute runstore-echo", http)
        send = _one(spans, "send StartWorkflow", execute)
        start = _one(spans, "apply StartWorkflow", send)
        projected = _one(spans, "project events", start)
        task = _one(spans, "workflow task runstore-echo", start)
        # The worker's report is applied by the engine within the same trace, and
        # projected again.
        reports = [s for s in spans if s.parent_span_id == task.span_id]
        assert reports and all(s.name.startswith("apply ") for s in reports)
        finished = _one(spans, "project events", reports[-1])
        return {
            "http": http,
            "start": start,
            "projected": projected,
            "task": task,
            "report": reports[-1],
            "finished": finished,
        }

    path = wait_until(whole_path, timeout=60)
    print(_tree(collector.trace(TRACE_ID), CALLER_SPAN))  # the trace, with pytest -s
    assert {s.service for s in path.values()} == {
        "runstore-api",
        "runstore-engine",
        "runstore-projector",
        "runstore-worker",
    }
    assert path["http"].attributes["http.response.status_code"] == 200
    assert path["start"].attributes["runstore.execution_id"] == "traced-1"
    assert path["start"].attributes["runstore.outcome"] == "accepted"
    assert path["projected"].attributes["runstore.execution_id"] == "traced-1"
    assert path["task"].attributes["runstore.execution_id"] == "traced-1"
    assert path["report"].attributes["runstore.execution_id"] == "traced-1"


def test_the_sdk_body_traceparent_and_custom_attributes_are_honoured(
    traced: tuple[Stack, Collector],
) -> None:
    stack, collector = traced
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    _execute(
        stack,
        "traced-2",
        body={
            "traceparent": f"00-{trace_id}-b7ad6b7169203331-01",
            "custom_tracing_attributes": {"team": "billing"},
        },
    )

    def applied() -> CollectedSpan:
        spans = collector.trace(trace_id)
        execute = _one(spans, "execute runstore-echo", "b7ad6b7169203331")
        assert execute.attributes["team"] == "billing"
        return _one(spans, "apply StartWorkflow", _one(spans, "send StartWorkflow", execute))

    assert wait_until(applied, timeout=60).attributes["runstore.execution_id"] == "traced-2"


def test_a_traceparent_kafka_header_on_a_produced_command_continues_the_trace(
    traced: tuple[Stack, Collector],
) -> None:
    """A producer that is not the API (a script, another service) puts `traceparent` on
    its command record: the engine's span is its child, and the trace goes on."""
    stack, collector = traced
    trace_id = "5c1a9e0f3d2b4c6e8f1a2b3c4d5e6f70"
    producer_span = "1122334455667788"
    start = command("StartWorkflow", "traced-3", workflow_name="runstore-echo", input={"n": 2})
    asyncio.run(
        produce(
            stack.env["RUNSTORE_KAFKA_BOOTSTRAP"],
            topic(stack.env, "commands"),
            [("traced-3", start)],
            headers=[("traceparent", f"00-{trace_id}-{producer_span}-01".encode())],
        )
    )

    def whole_path() -> CollectedSpan:
        spans = collector.trace(trace_id)
        applied = _one(spans, "apply StartWorkflow", producer_span)
        assert applied.attributes["runstore.command_id"] == start["command_id"]
        _one(spans, "project events", applied)
        task = _one(spans, "workflow task runstore-echo", applied)
        return _one(spans, "apply CompleteWorkflowTask", task)

    completed = wait_until(whole_path, timeout=60)
    assert completed.attributes["runstore.execution_id"] == "traced-3"


def test_child_workflows_started_by_a_run_stay_in_its_trace(
    traced: tuple[Stack, Collector],
) -> None:
    stack, collector = traced
    trace_id = "7d3c2b1a09f8e7d6c5b4a39281706f5e"
    _execute(
        stack,
        "traced-4",
        body={"input": {"items": [1, 2]}},
        headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"},
        workflow="fan-out",
    )

    def children() -> list[CollectedSpan]:
        spans = collector.trace(trace_id)
        http = _one(spans, "POST /v1/workflows/{workflow_identifier}/execute", CALLER_SPAN)
        send = _one(spans, "send StartWorkflow", _one(spans, "execute fan-out", http))
        task = _one(spans, "workflow task fan-out", _one(spans, "apply StartWorkflow", send))
        # The task's report starts the children: their engine spans are its children.
        reports = [s.span_id for s in spans if s.parent_span_id == task.span_id]
        started = [
            s for s in spans if s.name == "apply StartWorkflow" and s.parent_span_id in reports
        ]
        assert len(started) == 2, [(s.name, s.parent_span_id) for s in spans]
        for child in started:
            _one(spans, "workflow task runstore-echo", child)  # and the children ran
        return started

    started = wait_until(children, timeout=60)
    assert {s.attributes["runstore.execution_id"] for s in started}.isdisjoint({"traced-4"})
    print(_tree(collector.trace(trace_id), CALLER_SPAN))
