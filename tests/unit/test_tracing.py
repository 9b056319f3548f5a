"""The tracing helpers with the SDK's in-memory span exporter: context carried in Kafka
headers, one consumer span per commit, and nothing at all while tracing is off."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing


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
