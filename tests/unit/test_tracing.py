"""The tracing helpers with the SDK's in-memory span exporter: context carried in Kafka
headers, one consumer span per commit, and nothing at all while tracing is off."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from schemas.commands import COMMAND_ADAPTER
from services.common import tracing
from services.common.settings import RunstoreSettings, Topics
from services.engine.app import outgoing_records
from services.engine.command_spans import CommandSpans
from services.engine.domain import fold
from services.engine.outbound import Decided, Outbound
from services.engine.outcomes import accepted
from services.engine.validation import InboundRecord
from tests.support.engine import parsed_command as command
from tests.support.engine import started_commit


@dataclass
class Record:
    key: bytes
    headers: list[tuple[str, bytes]]
    partition: int = 0
    offset: int = 0


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.install(provider)
    try:
        yield memory
    finally:
        tracing.install(None)


def test_when_off_nothing_is_traced_and_no_header_is_added() -> None:
    assert tracing.tracer() is None
    with tracing.producing("send X", "t", {}) as headers:
        assert headers is None
    assert tracing.current_headers() is None
    with tracing.consumed_spans("project events", "t", [Record(b"e", [])]) as spans:
        assert spans == []


def test_a_produced_record_continues_its_trace_in_the_consumer(
    exporter: InMemorySpanExporter,
) -> None:
    with tracing.producing("send StartWorkflow", "commands", {"runstore.execution_id": "e"}) as h:
        assert h is not None
    assert "traceparent" in h
    parent = tracing.parent_of(tracing.as_kafka(h))
    span = tracing.start_span("apply StartWorkflow", parent, tracing.SpanKind.CONSUMER, {})
    span.end()
    sent, applied = exporter.get_finished_spans()
    assert applied.parent is not None
    assert applied.parent.span_id == sent.context.span_id
    assert applied.context.trace_id == sent.context.trace_id


def test_events_of_one_commit_share_one_projector_span(exporter: InMemorySpanExporter) -> None:
    first = tracing.start_span("apply A", None, tracing.SpanKind.CONSUMER, {})
    second = tracing.start_span("apply B", None, tracing.SpanKind.CONSUMER, {})
    a, b = tracing.as_kafka(tracing.headers_of(first)), tracing.as_kafka(tracing.headers_of(second))
    records = [
        Record(b"x", [*a, ("seq", b"1")]),
        Record(b"x", [*a, ("seq", b"2")]),
        Record(b"y", [*b, ("seq", b"7")]),
        Record(b"z", [("seq", b"3")]),  # no trace: no span
    ]
    with tracing.consumed_spans("project events", "events", records) as spans:
        assert len(spans) == 2
    projected = [s for s in exporter.get_finished_spans() if s.name == "project events"]
    by_parent = {s.parent.span_id: s for s in projected if s.parent is not None}
    assert by_parent[first.get_span_context().span_id].attributes["runstore.seq"] == 2
    assert by_parent[second.get_span_context().span_id].attributes["runstore.execution_id"] == "y"


def test_a_failed_batch_ends_its_spans_as_errors(exporter: InMemorySpanExporter) -> None:
    parent = tracing.start_span("apply A", None, tracing.SpanKind.CONSUMER, {})
    record = Record(b"x", tracing.as_kafka(tracing.headers_of(parent)))
    with (
        pytest.raises(RuntimeError),
        tracing.consumed_spans("project events", "events", [record]),
    ):
        raise RuntimeError("store down")
    (failed,) = exporter.get_finished_spans()
    assert not failed.status.is_ok


def _started_batch(headers: tuple[tuple[str, bytes], ...]) -> tuple[InboundRecord, Outbound]:
    """The engine's output for one accepted StartWorkflow whose record had `headers`, with
    a command it sends on (as a parent's step sends a child's start)."""
    start = command("StartWorkflow", "c1", workflow_name="wf", input={"n": 1})
    child = command("StartWorkflow", "c1:child", workflow_name="wf")
    commit = started_commit()
    state = fold(commit.events, None)
    assert state is not None
    record = InboundRecord(0, 5, b"e1", COMMAND_ADAPTER.dump_json(start), headers)
    out = Outbound()
    out.add(
        [
            Decided(
                record,
                start,
                commit,
                accepted(start, commit, state, commit.committed_at),
                False,
                (child,),
            )
        ]
    )
    return record, out


def test_when_off_the_engine_adds_no_trace_header_to_events_tasks_or_outcomes() -> None:
    assert tracing.tracer() is None
    caller = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    _, out = _started_batch((caller,))
    records = list(outgoing_records(out, Topics.with_prefix("")))
    assert {r.topic for r in records} == {
        "workflows.events",
        "workflows.tasks",
        "workflows.outcomes",
        "workflows.commands",
    }
    for record in records:
        assert "traceparent" not in (record.headers or {}), record


def test_the_engine_continues_a_commands_trace_on_everything_it_publishes(
    exporter: InMemorySpanExporter,
) -> None:
    with tracing.producing("send StartWorkflow", "commands", {}) as sent_headers:
        assert sent_headers is not None
    record, out = _started_batch(tuple(tracing.as_kafka(sent_headers)))
    spans = CommandSpans()
    spans.received([record])
    traced = spans.start(out)
    records = list(outgoing_records(out, Topics.with_prefix(""), traced=traced))
    assert {r.topic for r in records} == {
        "workflows.events",
        "workflows.tasks",
        "workflows.outcomes",
        "workflows.commands",  # the child's start: the child's apply span follows this one
    }
    tracing.end_all(traced.spans)
    sent, applied = exporter.get_finished_spans()
    assert applied.name == "apply StartWorkflow"
    assert applied.parent is not None and applied.parent.span_id == sent.context.span_id
    assert applied.attributes is not None
    assert applied.attributes["messaging.kafka.offset"] == 5
    for outgoing in records:
        assert outgoing.headers is not None, outgoing
        parent = tracing.parent_of(tracing.as_kafka(outgoing.headers))
        assert parent is not None
        carried = trace.get_current_span(parent).get_span_context()
        assert (carried.trace_id, carried.span_id) == (
            applied.context.trace_id,
            applied.context.span_id,
        )


def test_spans_go_to_the_runstore_endpoint_else_the_standard_otlp_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "RUNSTORE_TRACING_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    assert tracing.endpoint_of(RunstoreSettings()) is None  # off by default
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert tracing.endpoint_of(RunstoreSettings()) == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/in")
    assert tracing.endpoint_of(RunstoreSettings()) == "http://traces:4318/in"
    ours = RunstoreSettings(tracing_endpoint="http://ours:4318")
    assert tracing.endpoint_of(ours) == "http://ours:4318/v1/traces"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.endpoint_of(ours) is None
