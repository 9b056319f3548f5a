"""The API encodes a command with the command model's own serializer instead of the
command union's adapter (a third of the CPU: the adapter first finds the union member).
Both must give the same bytes for every kind of command, or the engine (which parses with
the adapter) and the admission rule would see other records than before."""

from __future__ import annotations

import random
from typing import Any

from schemas.commands import COMMAND_ADAPTER, Command
from tests.support.engine_corpus import _bench_stream
from tests.unit.histories.record import ISSUED, SCENARIOS, Recorder


class _Collecting(Recorder):
    """Records every command the scenarios apply (successors and children included)."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[Command] = []

    def apply(self, raw: dict[str, Any]) -> list[Command]:
        raw.setdefault("issued_at", ISSUED.isoformat())
        raw.setdefault("command_id", f"cmd-{self.tick + 1:04d}")  # as Recorder.apply
        self.applied.append(COMMAND_ADAPTER.validate_python(raw))
        return super().apply(raw)


def every_kind_of_command() -> list[Command]:
    recorder = _Collecting()
    for scenario, _ in SCENARIOS.values():
        scenario(recorder)
    bench = [COMMAND_ADAPTER.validate_python(c) for c in _bench_stream(240, random.Random(16))]
    start_with_options = COMMAND_ADAPTER.validate_python(
        {
            "type": "StartWorkflow",
            "command_id": "c-1",
            "execution_id": "e-1",
            "issued_at": "2026-12-06T03:00:00.123456+00:00",
            "user_id": "alice",
            "payload": {
                "workflow_name": "w",
                "input": {"s": "é\u2028", "n": [1, 2.5, None, True]},
                "deployment_name": "d",
                "execution_timeout_seconds": 12.5,
                "retry_policy": {"max_attempts": 3, "initial_interval_seconds": 1.5},
                "workflow_tags": ["a", "b"],
            },
        }
    )
    return [*recorder.applied, *bench, start_with_options]


def test_the_models_serializer_writes_the_adapters_bytes_for_every_kind_of_command() -> None:
    commands = every_kind_of_command()
    assert len({c.type for c in commands}) >= 15  # the worker protocol's kinds are there
    for command in commands:
        encoded = command.__pydantic_serializer__.to_json(command)
        assert encoded == COMMAND_ADAPTER.dump_json(command), command.type
        assert COMMAND_ADAPTER.validate_json(encoded) == command
