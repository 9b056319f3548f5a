"""Commits as the engine stores them, for the event-store and commit-log contract suites:
seq 1 starts the run, every later seq is a signal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.commits import Commit, SourcePosition
from schemas.common import Payload
from schemas.events import ExecutionStarted, SignaledAttributes, SignalReceived, StartedAttributes


def make_commit(
    execution_id: str,
    seq: int,
    *,
    run_id: str,
    command_id: str | None = None,
    with_source: bool = False,
) -> Commit:
    """Commit `seq` of `execution_id` in run `run_id` (with the Kafka position it came
    from when `with_source`)."""
    common: dict[str, Any] = {
        "event_id": f"{execution_id}:{seq}:0",
        "execution_id": execution_id,
        "seq": seq,
        "index": 0,
        "event_number": seq,
        "run_id": run_id,
        "workflow_name": "wf",
        "root_execution_id": execution_id,
        "timestamp_ns": 1_700_000_000_000_000_000 + seq,
        "command_id": command_id or f"cmd-{execution_id}-{seq}",
    }
    event = (
        ExecutionStarted(
            **common,
            attributes=StartedAttributes(task_id="t", workflow_name="wf", input=Payload(value=1)),
        )
        if seq == 1
        else SignalReceived(
            **common, attributes=SignaledAttributes(signal_name="s", input=Payload(value=seq))
        )
    )
    return Commit(
        execution_id=execution_id,
        seq=seq,
        command_id=common["command_id"],
        command_type="StartWorkflow" if seq == 1 else "SignalExecution",
        run_id=run_id,
        events=[event],
        committed_at=datetime(2026, 1, 1, tzinfo=UTC),
        source=SourcePosition(partition=0, offset=seq) if with_source else None,
        state={"seq": seq},
    )
