"""OpenTelemetry tracing: off unless an OTLP endpoint is configured, so a service that
does not trace pays one `is None` test per batch and nothing per record.

On when `RUNSTORE_TRACING_ENDPOINT` (an OTLP/HTTP base URL, e.g. http://collector:4318)
or the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` is
set (and `OTEL_SDK_DISABLED` is not true). Spans are batched by the SDK's
`BatchSpanProcessor` (its `OTEL_BSP_*` variables apply) and sampled by its sampler
(`OTEL_TRACES_SAMPLER`, default: parent-based, always on).

The trace context travels between services as W3C `traceparent` / `tracestate` headers:
on HTTP requests (the mistralai SDK sends one with every call) and on Kafka records
(commands, events, tasks, outcomes). docs/operations.md lists the spans.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.settings import RunstoreSettings

_PROPAGATOR = TraceContextTextMapPropagator()
_FIELDS = frozenset(("traceparent", "tracestate"))

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def tracer() -> Tracer | None:
    """The process's tracer, or None when tracing is off (the one test hooks make)."""
    return _tracer


def endpoint_of(settings: RunstoreSettings) -> str | None:
    """Where spans go: the RUNSTORE setting, else the standard OTLP variables; None = off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if settings.tracing_endpoint:
        return settings.tracing_endpoint.rstrip("/") + "/v1/traces"
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else None


def setup_tracing(service: str, settings: RunstoreSettings, set_global: bool = True) -> bool:
    """Turn tracing on for this process when an endpoint is configured; True if on.
    With `set_global`, also the global tracer provider, so a worker's own code can add
    child spans. (Not for the API: FastAPI traces requests through the global provider by
    itself, which would add a second, unnamed server span next to `RequestTracing`'s.)"""
    endpoint = endpoint_of(settings)
    if endpoint is None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if set_global:
        trace.set_tracer_provider(provider)
    install(provider)
    return True


def install(provider: TracerProvider | None) -> None:
    """Trace with `provider` (tests: one with an in-memory exporter); None turns it off."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("runstore")


def shutdown_tracing() -> None:
    """Export what is buffered and stop (also done at interpreter exit by the SDK)."""
    if _provider is not None:
        _provider.shutdown()


def parent_of(headers: Iterable[tuple[str, bytes]] | None) -> Context | None:
    """The trace context a Kafka record's headers carry, or None without a traceparent."""
    carrier = {k: v.decode("latin-1") for k, v in headers or () if k in _FIELDS}
    if "traceparent" not in carrier:
        return None
    context = _PROPAGATOR.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def parent_of_text(headers: Mapping[str, str]) -> Context | None:
    """The same for text headers (HTTP)."""
    if "traceparent" not in headers:
        return None
    return _PROPAGATOR.extract({k: headers[k] for k in _FIELDS if k in headers})


def headers_of(span: Span) -> dict[str, str]:
    """`traceparent` (and `tracestate`) naming `span` as the parent of what follows."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def current_headers() -> dict[str, str] | None:
    """Headers for a record produced inside the current span; None when not tracing."""
    if _tracer is None:
        return None
    span = trace.get_current_span()
    return headers_of(span) if span.get_span_context().is_valid else None


def as_kafka(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode("latin-1")) for k, v in headers.items()]


def start_span(
    name: str,
    parent: Context | None,
    kind: SpanKind,
    attributes: Mapping[str, Any],
    start_time: int | None = None,
) -> Span:
    """A span (the caller ends it); only call when `tracer()` is not None."""
    assert _tracer is not None
    return _tracer.start_span(
        name, context=parent, kind=kind, attributes=dict(attributes), start_time=start_time
    )


def end_all(spans: Iterable[Span], error: BaseException | None = None) -> None:
    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


@contextmanager
def consumed_spans(
    name: str, topic: str, records: Iterable[Any], attributes: Mapping[str, Any] = {}
) -> Iterator[list[Span]]:
    """One CONSUMER span per group of records that carry the same trace context (the
    events of one commit share their engine span's), ended when the block ends (with
    the error, if it raises). Records without a traceparent get none. Nothing at all
    when tracing is off."""
    if _tracer is None:
        yield []
        return
    groups: dict[bytes, list[Any]] = {}
    for record in records:
        for key, value in record.headers or ():
            if key == "traceparent":
                groups.setdefault(value, []).append(record)
                break
    spans: list[Span] = []
    for grouped in groups.values():
        first = grouped[0]
        seqs = [int(v) for r in grouped for k, v in r.headers or () if k == "seq" and v.isdigit()]
        spans.append(
            start_span(
                name,
                parent_of(first.headers),
                SpanKind.CONSUMER,
                {
                    **attributes,
                    "messaging.system": "kafka",
                    "messaging.destination.name": topic,
                    "messaging.batch.message_count": len(grouped),
                    "messaging.kafka.destination.partition": first.partition,
                    "messaging.kafka.offset": first.offset,
                    "runstore.execution_id": (first.key or b"").decode("utf-8", "replace"),
                    **({"runstore.seq": max(seqs)} if seqs else {}),
                },
            )
        )
    try:
        yield spans
    except BaseException as exc:
        end_all(spans, exc)
        raise
    end_all(spans)


def producing(
    name: str, topic: str, attributes: Mapping[str, Any]
) -> AbstractContextManager[dict[str, str] | None]:
    """A PRODUCER span (child of the current one) around publishing a record, and the
    headers that make the record's consumer continue it; None when tracing is off.
    (Off, a shared no-op: the API enters this for every command.)"""
    if _tracer is None:
        return _NO_HEADERS
    return _producing(_tracer, name, topic, attributes)


@contextmanager
def _producing(
    tracer: Tracer, name: str, topic: str, attributes: Mapping[str, Any]
) -> Iterator[dict[str, str] | None]:
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.PRODUCER,
        attributes={
            **attributes,
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
        },
    ) as span:
        yield headers_of(span)


def execute_span(
    name: str, traceparent: str | None, new_trace: bool, attributes: Mapping[str, str] | None
) -> AbstractContextManager[None]:
    """The current span while an HTTP execute publishes its command: the child of the
    body's `traceparent` (the mistralai SDK's field) when given, else a new trace's root
    with `force_new_trace`, else the child of the request's span; the body's
    `custom_tracing_attributes` are its attributes. Nothing when tracing is off (a shared
    no-op)."""
    if _tracer is None:
        return _NO_SPAN
    return _execute_span(_tracer, name, traceparent, new_trace, attributes)


@contextmanager
def _execute_span(
    tracer: Tracer,
    name: str,
    traceparent: str | None,
    new_trace: bool,
    attributes: Mapping[str, str] | None,
) -> Iterator[None]:
    parent = parent_of_text({"traceparent": traceparent}) if traceparent else None
    if parent is None and new_trace:
        parent = Context()  # empty: no parent
    with tracer.start_as_current_span(name, context=parent, attributes=dict(attributes or {})):
        yield


_NO_HEADERS: AbstractContextManager[dict[str, str] | None] = nullcontext(None)
_NO_SPAN: AbstractContextManager[None] = nullcontext()
