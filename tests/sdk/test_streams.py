"""Live streams (SSE) through the official SDK: history then live events, resume after a
disconnect without gap or repeat, keep-alives, filters, and how streams end."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, SDKError

from tests.support.eventually import wait_until
from tests.support.stack import Stack, StackWith


@pytest.fixture(scope="module")
def module_stack(stack_with: StackWith) -> Iterator[Stack]:
    """A stack of its own: short keep-alives make them observable."""
    with stack_with(RUNSTORE_API_SSE_KEEPALIVE_SECONDS="0.5") as stack:
        yield stack


@pytest.fixture
def client(module_stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=module_stack.api_url)


class Collector:
    """Reads an SDK event stream on a thread; the test acts meanwhile."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self.stream:
                self.items.append(item)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()

    @property
    def types(self) -> list[str]:
        return [i.data.data.event_type for i in self.items]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Any]:
        def enough() -> None:
            assert self.error is None, self.error
            assert len(self.items) >= count, self.types

        wait_until(enough, timeout)
        return self.items

    def close(self) -> None:
        self.stream.close()
        self.ended.wait(10)


def new_id(prefix: str = "st") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def start(client: Mistral, workflow: str = "streamer", execution_id: str | None = None) -> str:
    return client.workflows.execute_workflow(
        workflow_identifier=workflow, execution_id=execution_id or new_id()
    ).execution_id


def signal(client: Mistral, execution_id: str, name: str) -> None:
    client.workflows.executions.signal_workflow_execution(
        execution_id=execution_id, name=name, input={"n": name}
    )


def signal_names(items: list[Any]) -> list[str]:
    return [
        i.data.data.attributes.payload.value["signal_name"]
        for i in items
        if i.data.data.event_type == "CUSTOM_TASK_COMPLETED"
    ]


# --- the execution stream ----------------------------------------------------------------


def test_execution_stream_sends_history_then_live_events_and_ends_when_closed(
    client: Mistral,
) -> None:
    execution_id = start(client)
    signal(client, execution_id, "before")
    seen = Collector(client.workflows.executions.stream(execution_id=execution_id))
    seen.wait_for(2)
    signal(client, execution_id, "during")
    seen.wait_for(3)
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    assert seen.ended.wait(20), "the stream of a closed execution ends"
    assert seen.error is None
    assert seen.types == [
        "WORKFLOW_EXECUTION_STARTED",
        "CUSTOM_TASK_COMPLETED",
        "CUSTOM_TASK_COMPLETED",
        "WORKFLOW_EXECUTION_CANCELED",
    ]
    assert signal_names(seen.items) == ["before", "during"]
    sequences = [i.data.broker_sequence for i in seen.items]
    assert sequences == sorted(set(sequences))
    assert [i.id for i in seen.items] == [str(s) for s in sequences]
    first = seen.items[0].data
    assert first.stream == execution_id
    assert first.workflow_context.workflow_exec_id == execution_id
    assert first.workflow_context.workflow_name == "streamer"
    assert first.data.parent_workflow_exec_id is None
    assert isinstance(first.data.event_timestamp, int)


def test_resume_after_a_disconnect_loses_and_repeats_nothing(client: Mistral) -> None:
    execution_id = start(client)
    first = Collector(client.workflows.executions.stream(execution_id=execution_id))
    signal(client, execution_id, "one")
    first.wait_for(2)
    first.close()
    last_id = first.items[-1].id

    signal(client, execution_id, "two")  # while nobody listens
    signal(client, execution_id, "three")
    again = Collector(
        client.workflows.executions.stream(execution_id=execution_id, last_event_id=last_id)
    )
    again.wait_for(2)
    signal(client, execution_id, "four")
    again.wait_for(3)
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    assert again.ended.wait(20)
    assert signal_names(first.items) == ["one"]
    assert signal_names(again.items) == ["two", "three", "four"]
    assert again.types[-1] == "WORKFLOW_EXECUTION_CANCELED"
    ids = [int(i.id) for i in first.items + again.items]
    assert ids == sorted(set(ids))


def test_resume_by_event_id_works_too(client: Mistral) -> None:
    execution_id = start(client)
    signal(client, execution_id, "a")
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    with client.workflows.executions.stream(execution_id=execution_id) as stream:
        items = list(stream)
    event_id = items[0].data.data.event_id  # "{execution_id}:{seq}:{index}"
    with client.workflows.executions.stream(
        execution_id=execution_id, last_event_id=event_id
    ) as stream:
        rest = list(stream)
    assert [i.id for i in rest] == [i.id for i in items[1:]]


def test_a_terminated_execution_ends_its_stream_without_an_unknown_event(
    client: Mistral,
) -> None:
    execution_id = start(client)
    seen = Collector(client.workflows.executions.stream(execution_id=execution_id))
    seen.wait_for(1)
    client.workflows.executions.terminate_workflow_execution(execution_id=execution_id)
    assert seen.ended.wait(20)
    assert seen.error is None
    assert seen.types == ["WORKFLOW_EXECUTION_STARTED"]


def test_a_reset_continues_the_stream_with_the_new_run(client: Mistral) -> None:
    execution_id = start(client)
    seen = Collector(client.workflows.executions.stream(execution_id=execution_id))
    seen.wait_for(1)
    client.workflows.executions.reset_workflow(execution_id=execution_id, event_id=1)
    seen.wait_for(2)
    assert not seen.ended.is_set(), "the old run's end inside a reset does not end the stream"
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    assert seen.ended.wait(20)
    runs = [i.data.data.workflow_run_id for i in seen.items]
    assert seen.types == [
        "WORKFLOW_EXECUTION_STARTED",
        "WORKFLOW_EXECUTION_STARTED",
        "WORKFLOW_EXECUTION_CANCELED",
    ]
    assert runs[0] != runs[1] == runs[2]


def test_database_source_replays_stored_events_and_ends(client: Mistral) -> None:
    execution_id = start(client)
    signal(client, execution_id, "x")
    with client.workflows.executions.stream(
        execution_id=execution_id, event_source="DATABASE"
    ) as stream:
        items = list(stream)
    assert [i.data.data.event_type for i in items] == [
        "WORKFLOW_EXECUTION_STARTED",
        "CUSTOM_TASK_COMPLETED",
    ]


def test_live_source_sends_only_what_comes_next(client: Mistral) -> None:
    execution_id = start(client)
    signal(client, execution_id, "old")
    seen = Collector(
        client.workflows.executions.stream(execution_id=execution_id, event_source="LIVE")
    )
    time.sleep(0.5)  # let the subscription settle; nothing stored may arrive
    signal(client, execution_id, "new")
    seen.wait_for(1)
    seen.close()
    assert signal_names(seen.items) == ["new"]


def test_stream_of_an_unknown_execution_is_404(client: Mistral) -> None:
    with pytest.raises(SDKError) as err:
        client.workflows.executions.stream(execution_id=new_id("missing"))
    assert err.value.status_code == 404


def test_a_malformed_last_event_id_is_422(client: Mistral) -> None:
    execution_id = start(client)
    with pytest.raises(HTTPValidationError):
        client.workflows.executions.stream(execution_id=execution_id, last_event_id="yesterday")


def test_streams_need_a_key(module_stack: Stack) -> None:
    client = Mistral(server_url=module_stack.api_url)
    with pytest.raises(SDKError) as err:
        client.workflows.events.get_stream_events()
    assert err.value.status_code == 401


def test_silence_is_broken_by_keep_alive_comments(client: Mistral, module_stack: Stack) -> None:
    execution_id = start(client)
    url = f"{module_stack.api_url}/v1/workflows/executions/{execution_id}/stream"
    received = b""
    with httpx.stream(
        "GET", url, headers={"Authorization": "Bearer test-key"}, timeout=10
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 5
        for chunk in reply.iter_bytes():
            received += chunk
            if b": keep-alive\n\n" in received or time.monotonic() > deadline:
                break
    assert received.startswith(b"id: 1000000\nevent: event\ndata: {")
    assert b": keep-alive\n\n" in received


# --- the events stream ---------------------------------------------------------------------


def test_events_stream_of_one_execution_resumes_from_start_seq(client: Mistral) -> None:
    execution_id = start(client)
    signal(client, execution_id, "a")
    seen = Collector(client.workflows.events.get_stream_events(workflow_exec_id=execution_id))
    seen.wait_for(2)
    seen.close()
    signal(client, execution_id, "b")
    resumed = Collector(
        client.workflows.events.get_stream_events(
            workflow_exec_id=execution_id, start_seq=seen.items[-1].data.broker_sequence + 1
        )
    )
    resumed.wait_for(1)
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    resumed.wait_for(2)
    resumed.close()
    assert signal_names(seen.items) == ["a"]
    assert signal_names(resumed.items) == ["b"]
    assert resumed.types == ["CUSTOM_TASK_COMPLETED", "WORKFLOW_EXECUTION_CANCELED"]


def test_events_stream_across_executions_resumes_with_the_last_event_id_header(
    client: Mistral,
) -> None:
    workflow = new_id("wf")  # a name no other test uses: the filter isolates this test
    seen = Collector(client.workflows.events.get_stream_events(workflow_name=workflow))
    time.sleep(0.5)
    first, second = start(client, workflow), start(client, workflow)
    seen.wait_for(2)
    seen.close()
    signal(client, first, "missed-1")
    signal(client, second, "missed-2")
    client.workflows.executions.cancel_workflow_execution(execution_id=first)
    resumed = Collector(
        client.workflows.events.get_stream_events(
            workflow_name=workflow, last_event_id=seen.items[-1].id
        )
    )
    resumed.wait_for(3)
    signal(client, second, "live")
    resumed.wait_for(4)
    time.sleep(0.5)
    resumed.close()
    assert sorted(i.data.workflow_context.workflow_exec_id for i in seen.items) == sorted(
        [first, second]
    )
    assert set(seen.types) == {"WORKFLOW_EXECUTION_STARTED"}
    assert sorted(signal_names(resumed.items)) == ["live", "missed-1", "missed-2"]
    assert len(resumed.items) == 4
    assert resumed.types.count("WORKFLOW_EXECUTION_CANCELED") == 1
    assert signal_names(resumed.items)[-1] == "live"
    assert all(i.id.startswith("kafka:") for i in seen.items + resumed.items)


def test_the_unfiltered_events_stream_resumes_from_its_last_id_without_gap_or_repeat(
    client: Mistral,
) -> None:
    """No filter at all (the SDK sends `*` for each, and start_seq=0): live from the
    moment it opens; the Kafka-position id of the last frame received resumes it."""
    seen = Collector(client.workflows.events.get_stream_events())
    time.sleep(0.5)  # subscribed before the starts
    mine = [start(client) for _ in range(3)]

    def of_mine(items: list[Any]) -> list[Any]:
        return [i for i in items if i.data.workflow_context.workflow_exec_id in mine]

    wait_until(lambda: _at_least(of_mine(seen.items), 3), 20)
    seen.close()
    for execution_id in mine:  # while nobody listens
        signal(client, execution_id, f"missed-{execution_id}")
    client.workflows.executions.cancel_workflow_execution(execution_id=mine[0])
    resumed = Collector(client.workflows.events.get_stream_events(last_event_id=seen.items[-1].id))
    wait_until(lambda: _at_least(of_mine(resumed.items), 4), 20)
    signal(client, mine[1], "live")
    wait_until(lambda: _at_least(of_mine(resumed.items), 5), 20)
    time.sleep(0.5)
    resumed.close()

    before, after = of_mine(seen.items), of_mine(resumed.items)
    assert [i.data.data.event_type for i in before] == ["WORKFLOW_EXECUTION_STARTED"] * 3
    assert sorted(signal_names(after)) == sorted(["live", *(f"missed-{x}" for x in mine)])
    assert [i.data.data.event_type for i in after].count("WORKFLOW_EXECUTION_CANCELED") == 1
    assert signal_names(after)[-1] == "live"
    assert len(after) == 5
    event_ids = [i.data.data.event_id for i in before + after]
    assert len(event_ids) == len(set(event_ids)), "an event was delivered twice"
    assert all(i.id.startswith("kafka:") for i in seen.items + resumed.items)


def _at_least(items: list[Any], count: int) -> None:
    assert len(items) >= count, [i.data.data.event_type for i in items]


def test_events_stream_filters_by_event_type_and_root(client: Mistral) -> None:
    execution_id = start(client)
    seen = Collector(
        client.workflows.events.get_stream_events(
            root_workflow_exec_id=execution_id,
            workflow_event_types=["WORKFLOW_EXECUTION_CANCELED"],
        )
    )
    time.sleep(0.5)
    signal(client, execution_id, "ignored")
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    seen.wait_for(1)
    time.sleep(0.3)
    seen.close()
    assert seen.types == ["WORKFLOW_EXECUTION_CANCELED"]


def test_events_stream_activity_scope_leaves_workflow_events_out(client: Mistral) -> None:
    execution_id = start(client)
    seen = Collector(
        client.workflows.events.get_stream_events(workflow_exec_id=execution_id, scope="activity")
    )
    time.sleep(1.0)
    seen.close()
    assert seen.items == []


def test_events_stream_refuses_what_it_cannot_honour(client: Mistral) -> None:
    events = client.workflows.events
    with pytest.raises(HTTPValidationError):
        events.get_stream_events(metadata_filters={"tenant": "a"})
    with pytest.raises(HTTPValidationError):
        events.get_stream_events(start_seq=5)
    with pytest.raises(HTTPValidationError):
        events.get_stream_events(last_event_id="kafka:zero")


def test_many_subscribers_each_get_every_event(client: Mistral, tmp_path: Path) -> None:
    execution_id = start(client)
    readers = [
        Collector(client.workflows.executions.stream(execution_id=execution_id)) for _ in range(20)
    ]
    for r in readers:
        r.wait_for(1)
    signal(client, execution_id, "all")
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    for r in readers:
        assert r.ended.wait(20)
        assert r.types == [
            "WORKFLOW_EXECUTION_STARTED",
            "CUSTOM_TASK_COMPLETED",
            "WORKFLOW_EXECUTION_CANCELED",
        ]
