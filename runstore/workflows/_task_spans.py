"""The worker's part of a trace (only when tracing is on, services/common/tracing.py): a
span per execution's workflow tasks of a batch (they are advanced as one), the child of
the trace context the engine put on the last task record that carries one. Commands the
worker sends meanwhile carry it on (`command_headers`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from schemas.tasks import WorkflowTask
from services.common import tracing


@contextmanager
def task_span(
    tasks: Sequence[WorkflowTask], parents: Mapping[str, Context] | None, deployment: str
) -> Iterator[None]:
    """The current span while one execution's tasks are handled (none without parents)."""
    parent = (
        next((parents[t.task_id] for t in reversed(tasks) if t.task_id in parents), None)
        if parents
        else None
    )
    if parent is None:
        yield
        return
    last = tasks[-1]
    span = tracing.start_span(
        f"workflow task {last.workflow_name}",
        parent,
        SpanKind.CONSUMER,
        {
            "messaging.system": "kafka",
            "runstore.execution_id": last.execution_id,
            "runstore.run_id": last.run_id,
            "runstore.task_kinds": sorted({t.kind for t in tasks}),
            "runstore.seq": max(t.seq for t in tasks),
            "runstore.deployment": deployment,
        },
    )
    with trace.use_span(
        span, end_on_exit=True, record_exception=True, set_status_on_exception=True
    ):
        yield


def command_headers() -> list[tuple[str, bytes]] | None:
    """Headers of a command sent inside a task span; None otherwise."""
    headers = tracing.current_headers()
    return tracing.as_kafka(headers) if headers else None
