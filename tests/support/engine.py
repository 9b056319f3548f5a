"""Builders and fakes for engine tests: command bodies, the records they arrive in, and a
consumer that records the offsets committed and sought."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import count
from typing import Any

from aiokafka import TopicPartition

from schemas.commands import Command, parse_command
from schemas.commits import Commit
from services.engine.context import context_for
from services.engine.domain import decide, fold
from services.engine.processor import InboundRecord

_offsets = count(100)


def command(kind: str, execution_id: str, command_id: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "command_id": command_id,
        "execution_id": execution_id,
        "issued_at": "2026-01-01T00:00:00Z",
        "user_id": "u1",
        "payload": payload,
    }


def record(
    body: dict[str, Any] | bytes,
    key: str | None = None,
    offset: int | None = None,
    partition: int = 0,
) -> InboundRecord:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    if key is None and isinstance(body, dict):
        key = body["execution_id"]
    return InboundRecord(
        partition=partition,
        offset=next(_offsets) if offset is None else offset,
        key=key.encode() if key is not None else None,
        value=value,
    )


T0 = 1_700_000_000_000_000_000


def parsed_command(kind: str, command_id: str, **payload: Any) -> Command:
    """A command of execution ``e1``, parsed as the engine receives it."""
    return parse_command(json.dumps(command(kind, "e1", command_id, **payload)))


def started_commit(**payload: Any) -> Commit:
    """The first commit of execution ``e1``, as the engine's store would hold it."""
    start = parsed_command("StartWorkflow", "c1", workflow_name="wf", input={"n": 1}, **payload)
    events = decide(None, start, context_for(start, T0))
    state = fold(events, None)
    assert state is not None
    return Commit(
        execution_id="e1",
        seq=1,
        command_id="c1",
        command_type="StartWorkflow",
        run_id=events[-1].run_id,
        events=events,
        committed_at=datetime(2026, 1, 1, tzinfo=UTC),
        state=state.model_dump(mode="json", exclude_none=True),
    )


def start(execution_id: str, command_id: str) -> dict[str, Any]:
    return command("StartWorkflow", execution_id, command_id, workflow_name="wf", input={"n": 1})


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))
