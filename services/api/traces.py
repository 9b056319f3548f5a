"""Traces of an execution built from its history (no tracing backend): the run is the
root span, each activity and custom task a child span from its STARTED event to the
event that ended it, and every event a span event. Shapes: the SDK's
`WorkflowExecutionTraceSummaryResponse`, `…TraceEventsResponse`, `…TraceOTelResponse`
(`data_source` = `"runstore-history"`), `ExecutionTraceInfoResponse`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Event

Document = dict[str, Any]

DATA_SOURCE = "runstore-history"
# Event types of the run's own bookkeeping: shown only with include_internal_events.
_INTERNAL_PREFIXES = ("WORKFLOW_TASK_", "WORKFLOW_EXECUTION_RETRY_", "WORKFLOW_RUN_", "MARKER_")
_ENDS = ("_COMPLETED", "_FAILED", "_CANCELED", "_TIMED_OUT")


@dataclass
class Span:
    span_id: str
    name: str
    start_ns: int
    end_ns: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[Document] = field(default_factory=list)
    children: list[Span] = field(default_factory=list)

    def summary(self) -> Document:
        return {
            "span_id": self.span_id,
            "name": self.name,
            "start_time_unix_nano": self.start_ns,
            "end_time_unix_nano": self.end_ns,
            "attributes": self.attributes,
            "events": self.events,
            "children": [c.summary() for c in self.children],
        }


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, default=str)


def trace_event(event: Event) -> Document:
    attrs = event.model_dump(mode="json").get("attributes") or {}
    kind = str(event.type)
    return {
        "name": kind,
        "id": event.event_id,
        "timestamp_unix_nano": event.timestamp_ns,
        "attributes": {str(k): _scalar(v) for k, v in attrs.items()},
        "type": "EVENT_PROGRESS" if kind.endswith("_IN_PROGRESS") else "EVENT",
        "internal": kind.startswith(_INTERNAL_PREFIXES),
    }


def _task_key(event: Event) -> tuple[str, str] | None:
    attrs = event.model_dump(mode="json").get("attributes") or {}
    kind = str(event.type)
    if kind.startswith("ACTIVITY_TASK_"):
        return ("activity", str(attrs.get("task_id")))
    if kind.startswith("CUSTOM_TASK_"):
        return ("custom_task", str(attrs.get("custom_task_id")))
    return None


def span_tree(run: Document, events: list[Event], include_internal: bool = True) -> Span:
    """The run's span with one child per activity / custom task."""
    first = events[0].timestamp_ns if events else 0
    root = Span(
        span_id=str(run["run_id"]),
        name=str(run["workflow_name"]),
        start_ns=first,
        attributes={
            "execution_id": str(run["execution_id"]),
            "run_id": str(run["run_id"]),
            "status": run.get("status"),
        },
    )
    tasks: dict[tuple[str, str], Span] = {}
    for event in events:
        shaped = trace_event(event)
        if shaped["internal"] and not include_internal:
            continue
        key = _task_key(event)
        if key is None:
            root.events.append(shaped)
            if str(event.type).startswith("WORKFLOW_EXECUTION_") and str(event.type).endswith(
                (*_ENDS, "_TERMINATED", "_CONTINUED_AS_NEW")
            ):
                root.end_ns = event.timestamp_ns
            continue
        span = tasks.get(key)
        if span is None:
            attrs = shaped["attributes"]
            name = attrs.get("activity_name") or attrs.get("custom_task_type") or key[0]
            span = Span(
                span_id=f"{run['run_id']}:{key[0]}:{key[1]}",
                name=str(name),
                start_ns=event.timestamp_ns,
                attributes={"kind": key[0], "id": key[1]},
            )
            tasks[key] = span
            root.children.append(span)
        span.events.append(shaped)
        if str(event.type).endswith(_ENDS):
            span.end_ns = event.timestamp_ns
    return root


def otel_trace(root: Span) -> Document:
    """The span tree as Tempo's JSON (`TempoGetTraceResponse`: camelCase keys, integers
    and nanosecond times as strings)."""
    trace_id = root.span_id.replace("-", "")[:32].ljust(32, "0")
    spans: list[Document] = []

    def add(span: Span, parent: str | None) -> None:
        spans.append(
            {
                "traceId": trace_id,
                "spanId": span.span_id,
                "parentSpanId": parent,
                "name": span.name,
                "kind": "SPAN_KIND_INTERNAL",
                "startTimeUnixNano": str(span.start_ns),
                "endTimeUnixNano": str(span.end_ns or span.start_ns),
                "attributes": [_otel_attr(k, v) for k, v in span.attributes.items()],
                "events": [
                    {
                        "name": e["name"],
                        "timeUnixNano": str(e["timestamp_unix_nano"]),
                        "attributes": [_otel_attr(k, v) for k, v in e["attributes"].items()],
                    }
                    for e in span.events
                ],
            }
        )
        for child in span.children:
            add(child, span.span_id)

    add(root, None)
    return {
        "batches": [
            {
                "resource": {"attributes": [_otel_attr("service.name", "runstore")]},
                "scopeSpans": [{"scope": {"name": DATA_SOURCE}, "spans": spans}],
            }
        ]
    }


def _otel_attr(key: str, value: Any) -> Document:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": "" if value is None else str(value)}}
