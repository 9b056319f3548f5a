"""The pure timer rules (schemas/timers.py) and the in-memory pending timers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.events import EVENT_ADAPTER, Event
from schemas.timers import EXECUTION_TIMEOUT, TimerAction, firing_command, timer_changes
from services.timers.pending import PendingTimers, Writes


def event(kind: str, seq: int, attributes: dict[str, Any], run_id: str = "r1") -> Event:
    return EVENT_ADAPTER.validate_python(
        {
            "event_id": f"e:{seq}:0",
            "execution_id": "e",
            "seq": seq,
            "index": 0,
            "event_number": seq,
            "run_id": run_id,
            "workflow_name": "wf",
            "root_execution_id": "e",
            "timestamp_ns": 1_000_000_000 * seq,
            "command_id": f"c{seq}",
            "type": kind,
            "attributes": attributes,
        }
    )


def started(timeout: float | None) -> Event:
    attrs: dict[str, Any] = {"task_id": "t", "workflow_name": "wf", "input": {}}
    if timeout is not None:
        attrs["execution_timeout_seconds"] = timeout
    return event("WORKFLOW_EXECUTION_STARTED", 1, attrs)


def retry_scheduled(failed: int, at_ns: int) -> Event:
    return event(
        "WORKFLOW_EXECUTION_RETRY_SCHEDULED",
        2,
        {
            "task_id": "t",
            "failed_attempt": failed,
            "failure": {"message": "x"},
            "delay_seconds": 1,
            "retry_at_ns": at_ns,
        },
    )


def test_start_with_a_timeout_arms_the_execution_timeout_at_start_plus_timeout() -> None:
    (timer,) = timer_changes(started(2.5)).start
    assert timer.timer_id == EXECUTION_TIMEOUT
    assert timer.fire_at_ns == 1_000_000_000 + 2_500_000_000
    assert timer.action is TimerAction.TIME_OUT
    assert timer.command_id == f"timer:e:r1:execution-timeout:{timer.fire_at_ns}"


def test_start_without_a_timeout_arms_nothing() -> None:
    assert timer_changes(started(None)).empty


def test_retry_scheduled_arms_the_retry_and_retry_started_stops_it() -> None:
    (timer,) = timer_changes(retry_scheduled(1, 5_000)).start
    assert (timer.timer_id, timer.fire_at_ns, timer.attempt) == ("retry:1", 5_000, 2)
    command = firing_command(timer, datetime.now(UTC))
    assert command.type == "RetryExecution"
    assert command.payload.attempt == 2
    stop = timer_changes(
        event("WORKFLOW_EXECUTION_RETRY_STARTED", 3, {"task_id": "t", "attempt": 2})
    )
    assert stop.stop == ("retry:1",)


def test_a_closing_event_drops_every_timer_of_its_run() -> None:
    done = event("WORKFLOW_EXECUTION_COMPLETED", 4, {"task_id": "t", "result": {}})
    assert timer_changes(done).close_runs == ("r1",)


def test_long_execution_ids_get_a_digest_command_id_within_the_envelope_limit() -> None:
    (timer,) = timer_changes(started(1)).start
    long = timer.model_copy(update={"execution_id": "x" * 250})
    assert len(long.command_id) <= 200 and long.command_id.startswith("timer:")


def test_pending_timers_fire_once_and_a_closed_run_drops_them() -> None:
    pending = PendingTimers()
    pending.assign(0, [])
    writes = Writes(put={}, delete=set())
    pending.apply(0, "e", "r1", timer_changes(started(1)), writes)
    pending.apply(0, "e", "r1", timer_changes(retry_scheduled(1, 10**12)), writes)
    assert len(pending) == 2 and len(writes.put) == 2
    due = pending.due(now_ns=3_000_000_000, limit=10)
    assert [p.timer.timer_id for p in due] == [EXECUTION_TIMEOUT]
    assert pending.fired(due[0])
    assert pending.due(now_ns=3_000_000_000, limit=10) == []
    closed = event("WORKFLOW_EXECUTION_FAILED", 5, {"task_id": "t", "failure": {"message": "x"}})
    writes = Writes(put={}, delete=set())
    pending.apply(0, "e", "r1", timer_changes(closed), writes)
    assert len(pending) == 0 and writes.delete == {"e:r1:retry:1"}
    assert pending.due(now_ns=10**13, limit=10) == []


def test_a_failed_send_puts_the_timer_back_and_revoking_forgets_it() -> None:
    pending = PendingTimers()
    pending.assign(3, [timer_changes(started(1)).start[0]])
    (placed,) = pending.due(now_ns=10**10, limit=10)
    pending.retry(placed)
    assert pending.due(now_ns=10**10, limit=10) == [placed]
    pending.retry(placed)
    pending.revoke(3)
    assert len(pending) == 0 and pending.next_fire_ns() is None


def test_worker_protocol_timers_fire_as_fire_timer_and_stop_when_fired_or_canceled() -> None:
    started_timer = event(
        "TIMER_STARTED", 6, {"timer_id": "sleep-1", "duration_seconds": 5, "fire_at_ns": 9_000}
    )
    (timer,) = timer_changes(started_timer).start
    assert (timer.timer_id, timer.fire_at_ns, timer.action) == ("sleep-1", 9_000, TimerAction.FIRE)
    command = firing_command(timer, datetime.now(UTC))
    assert command.type == "FireTimer" and command.payload.timer_id == "sleep-1"
    for kind in ("TIMER_FIRED", "TIMER_CANCELED"):
        assert timer_changes(event(kind, 7, {"timer_id": "sleep-1"})).stop == ("sleep-1",)


def test_a_failed_workflow_task_and_a_cancel_request_arm_their_engine_timers() -> None:
    failed = event(
        "WORKFLOW_TASK_FAILED",
        8,
        {"task_id": "t", "failure": {"message": "x"}, "retry_at_ns": 11_000},
    )
    (retry,) = timer_changes(failed).start
    assert (retry.timer_id, retry.fire_at_ns) == ("workflow-task:8", 11_000)
    cancel = event("WORKFLOW_EXECUTION_CANCEL_REQUESTED", 9, {"cancel_deadline_ns": 12_000})
    (deadline,) = timer_changes(cancel).start
    assert (deadline.timer_id, deadline.fire_at_ns) == ("cancel-deadline", 12_000)


def _recorded_events() -> list[Event]:
    """Every event of the recorded histories (tests/unit/histories)."""
    import json
    from pathlib import Path

    found: list[Event] = []
    for path in sorted((Path(__file__).parent / "histories").rglob("*.json")):
        doc = json.loads(path.read_text())
        streams = doc.get("streams", [doc])
        for stream in streams:
            found.extend(EVENT_ADAPTER.validate_python(e) for e in stream["events"])
    return found


def test_the_timers_skip_only_event_types_that_change_no_timer() -> None:
    from services.timers.event_filter import TIMER_EVENT_TYPES, may_change_timers

    events = [
        *_recorded_events(),
        started(2.5),
        retry_scheduled(1, 5),
        event("WORKFLOW_EXECUTION_RETRY_STARTED", 3, {"task_id": "t", "attempt": 2}),
    ]
    skipped = {e.type for e in events if e.type not in TIMER_EVENT_TYPES}
    assert len(skipped) >= 5  # the histories hold activities, signals, task completions …
    for e in events:
        header = [("event-type", e.type.value.encode())]
        if not timer_changes(e).empty:
            assert may_change_timers(header), e.type
        assert may_change_timers(header) is (e.type in TIMER_EVENT_TYPES)
    # A record without the header (another producer) is always decoded.
    assert may_change_timers(None)
    assert may_change_timers([("traceparent", b"00-x")])


def test_every_event_class_timer_changes_branches_on_is_read_by_the_timers_service() -> None:
    # The header filter must name every type `timer_changes` can act on, including types
    # that no recorded history holds yet: its branches are `isinstance` checks, so the
    # types come from the classes it names (a new branch without its type here fails).
    import ast
    import inspect
    import typing

    import schemas.timers
    from services.timers.event_filter import TIMER_EVENT_TYPES

    tree = ast.parse(inspect.getsource(schemas.timers.timer_changes))
    checked = {
        node.args[1].id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "isinstance"
        and isinstance(node.args[1], ast.Name)
    }
    assert len(checked) >= 7, checked
    for name in checked:
        model = getattr(schemas.timers, name)
        types = typing.get_args(model.model_fields["type"].annotation)
        assert types, name
        assert set(types) <= TIMER_EVENT_TYPES, (name, set(types) - TIMER_EVENT_TYPES)
