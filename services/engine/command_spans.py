"""The engine's part of a trace (only when tracing is on): one span per applied command,
the child of the trace context its record carries (a root when it carries none), and
the headers that make the records the command produced (events, tasks, outcome)
continue that span."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common import tracing
from services.engine.outbound import Outbound
from services.engine.validation import InboundRecord

# Commands seen but not yet published: bounded, in case some never are (dead letters).
_MAX_WAITING = 100_000


class CommandSpans:
    def __init__(self) -> None:
        self._received: dict[str, tuple[Context | None, int, InboundRecord]] = {}

    def received(self, records: Sequence[InboundRecord]) -> None:
        """Note each command's parent and arrival (its span starts there)."""
        if len(self._received) > _MAX_WAITING:
            self._received.clear()
        now = time.time_ns()
        for record in records:
            try:
                command_id = json.loads(record.value or b"")["command_id"]
            except (ValueError, KeyError, TypeError):
                continue  # not a command: dead-lettered, no span
            if isinstance(command_id, str):
                self._received[command_id] = (tracing.parent_of(record.headers), now, record)

    def start(self, out: Outbound) -> TracedBatch:
        """A span per outcome of the batch, and the headers of its records."""
        batch = TracedBatch()
        for outcome in out.outcomes:
            parent, started, record = self._received.pop(outcome.command_id, (None, None, None))
            span = tracing.start_span(
                f"apply {outcome.command_type}",
                parent,
                SpanKind.CONSUMER,
                {
                    "messaging.system": "kafka",
                    "runstore.command_id": outcome.command_id,
                    "runstore.execution_id": outcome.execution_id,
                    "runstore.outcome": outcome.code.value if outcome.code else "accepted",
                    **(
                        {
                            "messaging.kafka.destination.partition": record.partition,
                            "messaging.kafka.offset": record.offset,
                        }
                        if record is not None
                        else {}
                    ),
                },
                start_time=started,
            )
            if not outcome.accepted:
                span.set_status(Status(StatusCode.ERROR, outcome.message or "rejected"))
            batch.spans.append(span)
            batch.by_command[outcome.command_id] = tracing.headers_of(span)
        for commit in out.commits:
            headers = batch.by_command.get(commit.command_id)
            if headers is not None:
                for event in commit.events:
                    batch.by_event[(commit.execution_id, event.seq)] = headers
        return batch


class TracedBatch:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.by_command: dict[str, dict[str, str]] = {}
        """Trace headers by command id (a commit's events, an outcome)."""
        self.by_event: dict[tuple[str, int], dict[str, str]] = {}
        """The same by (execution id, event seq): a task names the event that caused it."""
