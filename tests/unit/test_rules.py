"""Rules with one home each: which statuses are open, which events close a run, how the
read side truncates times, how history chunks are named."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.commands import StartWorkflow, StartWorkflowPayload
from schemas.common import TERMINAL_STATUSES, ExecutionStatus
from schemas.events import CLOSING_EVENT_TYPES, STATUS_AFTER, EventType
from services.common.clock import to_milliseconds
from services.common.readmodels.history_chunks import (
    HISTORY_CHUNK,
    history_chunk_id,
    history_chunk_range,
)


def test_open_statuses_are_exactly_the_non_terminal_ones() -> None:
    assert {s for s in ExecutionStatus if s.is_open} == {
        ExecutionStatus.RUNNING,
        ExecutionStatus.RETRYING_AFTER_ERROR,
    }
    assert all(s.is_open != s.is_terminal for s in ExecutionStatus)
    assert {s for s in ExecutionStatus if not s.is_open} == TERMINAL_STATUSES


def test_closing_events_are_those_that_leave_a_terminal_status() -> None:
    assert {
        EventType.WORKFLOW_EXECUTION_COMPLETED,
        EventType.WORKFLOW_EXECUTION_FAILED,
        EventType.WORKFLOW_EXECUTION_CANCELED,
        EventType.WORKFLOW_EXECUTION_TERMINATED,
        EventType.WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    } == CLOSING_EVENT_TYPES
    # A retry is scheduled on an open run: it does not close it.
    assert STATUS_AFTER[EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED].is_open
    assert EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED not in CLOSING_EVENT_TYPES


def test_times_are_truncated_to_the_millisecond_never_rounded() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 123_999, tzinfo=UTC)
    assert to_milliseconds(at) == datetime(2026, 1, 2, 3, 4, 5, 123_000, tzinfo=UTC)
    assert to_milliseconds(to_milliseconds(at)) == to_milliseconds(at)


def test_history_chunk_ids_change_every_hundred_events() -> None:
    assert HISTORY_CHUNK == 100
    assert history_chunk_id("r", 1) == "r:000000"
    assert history_chunk_id("r", 100) == "r:000000"
    assert history_chunk_id("r", 101) == "r:000001"
    assert history_chunk_range("r", 99, 201) == ["r:000000", "r:000001", "r:000002"]
    assert history_chunk_range("r", 5, 4) == []


def test_a_start_joins_the_tree_of_its_root_else_its_parent_else_its_own() -> None:
    def start(**payload: str) -> StartWorkflow:
        return StartWorkflow(
            command_id="c",
            execution_id="x",
            issued_at=datetime(2026, 1, 1, tzinfo=UTC),
            payload=StartWorkflowPayload(workflow_name="wf", **payload),
        )

    assert start().root_execution_id == "x"
    assert start(parent_execution_id="p").root_execution_id == "p"
    assert start(parent_execution_id="p", root_execution_id="r").root_execution_id == "r"
