"""Streams recorded once (tests/unit/histories/*.json) must still replay to the same state.

Each file holds streams as the engine stored them and the state that folding them gave
at recording time (also the snapshot the engine would have stored). A change to the
event schema, to `evolve` or to `ExecutionState` that breaks one of them would break
streams and snapshots already in production. Do not re-record a failing file: fix the
change. To add a history, see tests/unit/histories/record.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.commands import COMMAND_ADAPTER, StartWorkflow
from schemas.events import EVENT_LIST_ADAPTER, EventType
from services.engine.domain import Context, ExecutionState, evolve, fold, successor_commands
from services.engine.workflow_tasks import derived_commands

HISTORIES = Path(__file__).parent / "histories"
EXPECTED = {"lifecycle", "retry_to_success", "reset", "continue_as_new", "worker_protocol"}


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((HISTORIES / f"{name}.json").read_text())
    return document


def test_every_expected_history_is_present() -> None:
    recorded = {path.stem for path in HISTORIES.glob("*.json")}

    assert recorded >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_stream_replays_to_the_recorded_state(name: str) -> None:
    for stream in _load(name)["streams"]:
        events = EVENT_LIST_ADAPTER.validate_python(stream["events"])
        recorded_state = ExecutionState.model_validate(stream["final_state"])

        state = None
        for event in events:
            state = evolve(state, event)

        assert state == recorded_state, stream["execution_id"]
        assert fold(events) == recorded_state


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_stream_replays_from_every_snapshot(name: str) -> None:
    """A snapshot taken after any commit, then the later commits, gives the same state."""
    for stream in _load(name)["streams"]:
        events = EVENT_LIST_ADAPTER.validate_python(stream["events"])
        final = fold(events)
        for seq in sorted({e.seq for e in events}):
            snapshot = fold(e for e in events if e.seq <= seq)
            assert snapshot is not None
            restored = ExecutionState.model_validate(snapshot.model_dump(mode="json"))
            assert fold((e for e in events if e.seq > seq), restored) == final


def test_recorded_continue_as_new_yields_the_recorded_successor_command() -> None:
    streams = {s["execution_id"]: s for s in _load("continue_as_new")["streams"]}
    [origin] = [s for s in streams.values() if "successor_commands" in s]
    events = EVENT_LIST_ADAPTER.validate_python(origin["events"])
    [recorded] = origin["successor_commands"]
    commit = [e for e in events if e.seq == recorded["seq"]]
    state = fold(e for e in events if e.seq <= recorded["seq"])
    assert state is not None
    ctx = Context(
        now_ns=recorded["now_ns"], new_run_id="", new_execution_id="", successor_run_id=""
    )

    commands = successor_commands(commit, ctx, state)

    assert commands == [COMMAND_ADAPTER.validate_python(c) for c in recorded["commands"]]
    [command] = commands
    assert isinstance(command, StartWorkflow)
    successor = EVENT_LIST_ADAPTER.validate_python(streams[command.execution_id]["events"])
    assert successor[0].type is EventType.WORKFLOW_EXECUTION_STARTED
    assert successor[0].command_id == command.command_id
    assert successor[0].run_id == command.payload.run_id


def test_recorded_worker_protocol_derives_the_recorded_child_and_parent_commands() -> None:
    """The child's start, its reports to the parent: the same commands, the same ids."""
    recorded_any = False
    for stream in _load("worker_protocol")["streams"]:
        events = EVENT_LIST_ADAPTER.validate_python(stream["events"])
        for recorded in stream.get("successor_commands", []):
            commit = [e for e in events if e.seq == recorded["seq"]]
            state = fold(e for e in events if e.seq <= recorded["seq"])
            assert state is not None
            ctx = Context(
                now_ns=recorded["now_ns"], new_run_id="", new_execution_id="", successor_run_id=""
            )
            derived = successor_commands(commit, ctx, state) + derived_commands(commit, ctx, state)
            assert derived == [COMMAND_ADAPTER.validate_python(c) for c in recorded["commands"]]
            recorded_any = True
    assert recorded_any
