"""SSE frames and public event shapes, checked against the official SDK's own models and
parser (no servers needed)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from mistralai.client import Mistral, models
from mistralai.extra.exceptions import StreamDisconnectedError

from schemas.events import EVENT_ADAPTER, Event, EventType
from services.api.broker_stream import decode_kafka_id, encode_kafka_id
from services.api.public_events import (
    BEFORE_ALL,
    SIGNAL_TASK_TYPE,
    Position,
    parse_position,
    public_event,
    sse_payload,
)
from services.api.sse import KEEPALIVE, EventFilter, error_frame, frame, guarded
from tests.support.servers import free_port

PAYLOAD = {"type": "json", "value": {"k": 1}}
FAILURE = {"message": "boom", "type": "ValueError"}

ATTRIBUTES: dict[EventType, dict[str, Any]] = {
    EventType.WORKFLOW_EXECUTION_STARTED: {
        "task_id": "r:1",
        "workflow_name": "wf",
        "input": {"value": None},
        "user_id": "alice",
        "deployment_name": "d",
    },
    EventType.WORKFLOW_EXECUTION_COMPLETED: {"task_id": "r:2", "result": PAYLOAD},
    EventType.WORKFLOW_EXECUTION_FAILED: {"task_id": "r:2", "failure": FAILURE},
    EventType.WORKFLOW_EXECUTION_CANCELED: {"task_id": "r:2", "reason": None},
    EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW: {
        "task_id": "r:2",
        "new_execution_id": "e2",
        "new_execution_run_id": "r2",
        "workflow_name": "wf",
        "input": PAYLOAD,
    },
    EventType.WORKFLOW_TASK_TIMED_OUT: {"task_id": "t"},
    EventType.WORKFLOW_TASK_FAILED: {"task_id": "t", "failure": FAILURE},
    EventType.CUSTOM_TASK_STARTED: {"custom_task_id": "c", "custom_task_type": "llm"},
    EventType.CUSTOM_TASK_IN_PROGRESS: {"custom_task_id": "c", "custom_task_type": "llm"},
    EventType.CUSTOM_TASK_COMPLETED: {
        "custom_task_id": "c",
        "custom_task_type": "llm",
        "payload": PAYLOAD,
    },
    EventType.CUSTOM_TASK_FAILED: {"custom_task_id": "c", "custom_task_type": "llm"},
    EventType.CUSTOM_TASK_TIMED_OUT: {"custom_task_id": "c", "custom_task_type": "llm"},
    EventType.CUSTOM_TASK_CANCELED: {"custom_task_id": "c", "custom_task_type": "llm"},
    EventType.ACTIVITY_TASK_STARTED: {"task_id": "a", "activity_name": "fetch"},
    EventType.ACTIVITY_TASK_COMPLETED: {"task_id": "a", "activity_name": "fetch"},
    EventType.ACTIVITY_TASK_RETRYING: {
        "task_id": "a",
        "activity_name": "fetch",
        "attempt": 1,
        "failure": FAILURE,
    },
    EventType.ACTIVITY_TASK_FAILED: {"task_id": "a", "activity_name": "fetch", "attempt": 2},
    EventType.WORKFLOW_EXECUTION_TERMINATED: {"task_id": "r:2", "reason": "stop"},
    EventType.WORKFLOW_EXECUTION_TIMED_OUT: {"task_id": "r:2", "timeout_seconds": 5},
    EventType.WORKFLOW_EXECUTION_SIGNALED: {
        "signal_name": "approve",
        "input": PAYLOAD,
        "user_id": "bob",
    },
    EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED: {
        "task_id": "r:2",
        "failed_attempt": 1,
        "failure": FAILURE,
        "delay_seconds": 1.0,
        "retry_at_ns": 5,
    },
    EventType.WORKFLOW_EXECUTION_RETRY_STARTED: {"task_id": "r:3", "attempt": 2},
    EventType.WORKFLOW_RUN_RESET: {"previous_run_id": "r0", "event_id": 1},
    EventType.WORKFLOW_TASK_COMPLETED: {"task_seq": 2, "worker_id": "w1"},
    EventType.TIMER_STARTED: {"timer_id": "t1", "duration_seconds": 1.0, "fire_at_ns": 9},
    EventType.TIMER_FIRED: {"timer_id": "t1"},
    EventType.TIMER_CANCELED: {"timer_id": "t1"},
    EventType.MARKER_RECORDED: {"marker_id": "m1", "name": "side_effect", "value": PAYLOAD},
    EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED: {"reason": "x", "cancel_deadline_ns": 9},
    EventType.CHILD_WORKFLOW_INITIATED: {
        "child_execution_id": "c1",
        "workflow_name": "child",
        "input": PAYLOAD,
    },
    EventType.CHILD_WORKFLOW_STARTED: {"child_execution_id": "c1", "child_run_id": "cr1"},
    EventType.CHILD_WORKFLOW_START_FAILED: {"child_execution_id": "c1", "failure": FAILURE},
    EventType.CHILD_WORKFLOW_CLOSED: {
        "child_execution_id": "c1",
        "child_run_id": "cr1",
        "status": "COMPLETED",
        "result": PAYLOAD,
    },
    EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED: {
        "update_id": "u1",
        "update_name": "approve",
        "input": PAYLOAD,
    },
    EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED: {"update_id": "u1", "result": PAYLOAD},
}


def make_event(event_type: EventType, seq: int = 3, index: int = 1, **envelope: Any) -> Event:
    return EVENT_ADAPTER.validate_python(
        {
            "type": event_type.value,
            "event_id": f"e1:{seq}:{index}",
            "execution_id": "e1",
            "seq": seq,
            "index": index,
            "event_number": 2,
            "run_id": "r1",
            "workflow_name": "wf",
            "root_execution_id": envelope.get("root", "e1"),
            "parent_execution_id": envelope.get("parent"),
            "timestamp_ns": 1_735_787_045_123_456_789,
            "command_id": "c1",
            "attributes": ATTRIBUTES[event_type],
        }
    )


def test_every_stored_event_type_has_a_case() -> None:
    assert set(ATTRIBUTES) == set(EventType)


@pytest.mark.parametrize("event_type", list(EventType))
def test_what_reaches_a_stream_is_a_valid_public_sdk_event(event_type: EventType) -> None:
    payload = sse_payload(make_event(event_type))
    if payload is None:
        assert event_type in {
            EventType.WORKFLOW_EXECUTION_TERMINATED,
            EventType.WORKFLOW_EXECUTION_TIMED_OUT,
            EventType.WORKFLOW_EXECUTION_RETRY_STARTED,
            EventType.WORKFLOW_RUN_RESET,
            EventType.WORKFLOW_TASK_COMPLETED,
            EventType.TIMER_STARTED,
            EventType.TIMER_FIRED,
            EventType.TIMER_CANCELED,
            EventType.MARKER_RECORDED,
            EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED,
            EventType.CHILD_WORKFLOW_INITIATED,
            EventType.CHILD_WORKFLOW_STARTED,
            EventType.CHILD_WORKFLOW_START_FAILED,
            EventType.CHILD_WORKFLOW_CLOSED,
        }
        return
    parsed = models.StreamEventSsePayload.model_validate(payload)
    assert parsed.data.event_type == payload["data"]["event_type"]
    assert EventType(parsed.data.event_type).is_public
    assert parsed.broker_sequence == 3_000_001
    assert payload["data"]["parent_workflow_exec_id"] is None  # the key is always there
    assert payload["data"]["event_timestamp"] == 1_735_787_045_123_456_789


def test_public_events_keep_their_type_and_internal_attributes_out() -> None:
    started = public_event(make_event(EventType.WORKFLOW_EXECUTION_STARTED))
    assert started is not None
    assert started["event_type"] == "WORKFLOW_EXECUTION_STARTED"
    assert started["attributes"]["input"] == {"type": "json", "value": None}
    assert "user_id" not in started["attributes"]


def test_a_signal_is_shown_as_a_completed_custom_task() -> None:
    shown = public_event(make_event(EventType.WORKFLOW_EXECUTION_SIGNALED))
    assert shown is not None
    assert shown["event_type"] == "CUSTOM_TASK_COMPLETED"
    assert shown["attributes"]["custom_task_type"] == SIGNAL_TASK_TYPE
    assert shown["attributes"]["payload"]["value"] == {"signal_name": "approve", "input": {"k": 1}}


def test_an_update_is_shown_as_a_custom_task_started_then_completed() -> None:
    accepted = public_event(make_event(EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED))
    completed = public_event(make_event(EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED))
    assert accepted is not None and completed is not None
    assert accepted["event_type"] == "CUSTOM_TASK_STARTED"
    shown = accepted["attributes"]["payload"]["value"]
    assert shown == {"update_name": "approve", "input": {"k": 1}}
    assert completed["event_type"] == "CUSTOM_TASK_COMPLETED"
    assert completed["attributes"]["custom_task_type"] == "runstore.update"
    assert completed["attributes"]["payload"] == {"type": "json", "value": {"k": 1}}


def test_a_scheduled_retry_is_shown_as_a_failed_workflow_task() -> None:
    shown = public_event(make_event(EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED))
    assert shown is not None
    assert shown["event_type"] == "WORKFLOW_TASK_FAILED"
    assert shown["attributes"]["failure"]["message"] == "boom"


# --- positions and ids -----------------------------------------------------------------


def test_positions_round_trip_through_broker_sequences_and_event_ids() -> None:
    assert Position(3, 1).sequence == 3_000_001
    assert parse_position("3000001") == Position(3, 1)
    assert parse_position("exec:with:colons:12:0") == Position(12, 0)
    assert Position.from_sequence(3_000_000 - 1) < Position(3, 0)
    assert Position.from_sequence(3_000_000 - 1) > Position(2, 999)
    assert Position(1, 0) > BEFORE_ALL
    for bad in ["", "x", "1:2", "-5", "١٢"]:
        with pytest.raises(ValueError, match="neither a broker_sequence nor an event id"):
            parse_position(bad)


def test_kafka_ids_round_trip() -> None:
    positions = {0: 15, 3: 7, 1: 0}
    text = encode_kafka_id(positions)
    assert text == "kafka:0=15,1=0,3=7"
    assert decode_kafka_id(text) == positions
    assert decode_kafka_id("3000001") is None
    with pytest.raises(ValueError, match="malformed stream id"):
        decode_kafka_id("kafka:0=x")


# --- filters ---------------------------------------------------------------------------


def test_filters_treat_scope_activity_and_types() -> None:
    activity = sse_payload(make_event(EventType.ACTIVITY_TASK_STARTED))
    workflow = sse_payload(make_event(EventType.WORKFLOW_EXECUTION_STARTED))
    assert activity is not None and workflow is not None
    assert EventFilter(scope="activity").payload_matches(activity)
    assert not EventFilter(scope="activity").payload_matches(workflow)
    assert not EventFilter(scope="workflow").payload_matches(activity)
    assert EventFilter(activity_name="fetch").payload_matches(activity)
    assert not EventFilter(activity_name="other").payload_matches(activity)
    assert not EventFilter(activity_id="a").payload_matches(workflow)
    only = EventFilter(event_types=frozenset({"WORKFLOW_EXECUTION_STARTED"}))
    assert only.payload_matches(workflow) and not only.payload_matches(activity)


def test_envelope_filters_match_ids_and_names() -> None:
    child = make_event(EventType.WORKFLOW_EXECUTION_STARTED, root="root-1", parent="p-1")
    assert EventFilter(root_workflow_exec_id="root-1").envelope_matches(child)
    assert EventFilter(parent_workflow_exec_id="p-1").envelope_matches(child)
    assert not EventFilter(parent_workflow_exec_id="p-2").envelope_matches(child)
    assert EventFilter(workflow_exec_id="e1", stream="e1").envelope_matches(child)
    assert not EventFilter(workflow_name="other").envelope_matches(child)


# --- frames through the SDK's parser ---------------------------------------------------


@pytest.fixture(scope="module")
def frames_server() -> Iterator[str]:
    """A tiny server answering the execution stream path with scripted frames."""
    app = FastAPI()

    @app.get("/v1/workflows/executions/{execution_id}/stream")
    async def scripted(execution_id: str) -> StreamingResponse:
        async def frames() -> AsyncIterator[bytes]:
            started = sse_payload(make_event(EventType.WORKFLOW_EXECUTION_STARTED, seq=1, index=0))
            yield KEEPALIVE
            yield frame(started, event_id=str(1_000_000))
            yield KEEPALIVE
            if execution_id == "fails":
                raise RuntimeError("store unreachable")

        return StreamingResponse(
            guarded(frames(), lambda: "scripted"), media_type="text/event-stream"
        )

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


def test_frames_and_keep_alives_parse_in_the_sdk(frames_server: str) -> None:
    client = Mistral(api_key="k", server_url=frames_server)
    with client.workflows.executions.stream(execution_id="ok") as stream:
        items = list(stream)
    assert len(items) == 1
    assert items[0].id == "1000000"
    assert items[0].event == "event"
    assert items[0].data.data.event_type == "WORKFLOW_EXECUTION_STARTED"


def test_a_failure_after_the_200_reaches_the_sdk_as_an_error_frame(frames_server: str) -> None:
    client = Mistral(api_key="k", server_url=frames_server)
    stream = client.workflows.executions.stream(execution_id="fails")
    seen: list[Any] = []
    with pytest.raises(StreamDisconnectedError) as err:
        seen.extend(stream)
    assert len(seen) == 1
    assert err.value.reason == "internal_error"
    assert "store unreachable" in str(err.value.error)


def test_error_frames_are_named_error() -> None:
    assert error_frame("x").startswith(b"event: error\ndata: {")
    assert error_frame("x").endswith(b"\n\n")


async def test_guarded_passes_cancellation_through() -> None:
    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield KEEPALIVE
            await asyncio.sleep(10)

    gen = guarded(forever(), lambda: "t")
    assert await gen.__anext__() == KEEPALIVE
    task = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_asyncapi_document_covers_every_topic() -> None:
    import json
    from pathlib import Path

    from services.common.settings import Topics

    doc = json.loads((Path(__file__).parents[2] / "docs" / "asyncapi.json").read_text())
    assert doc["asyncapi"].startswith("3.")
    assert set(doc["channels"]) == set(Topics.with_prefix("").all())
