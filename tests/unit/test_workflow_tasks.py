"""The worker protocol's rules (docs/worker-protocol.md), given/when/then on the pure domain.

Histories are built with test_domain's `Stream`: real commands through `decide` + `evolve`.
"""

from __future__ import annotations

from typing import Any

import pytest

from schemas.commands import (
    CancelExecution,
    ChildReportPayload,
    CompleteWorkflowTask,
    CompleteWorkflowTaskPayload,
    FailWorkflowTask,
    FailWorkflowTaskPayload,
    FireTimer,
    FireTimerPayload,
    ReasonPayload,
    RecordChildWorkflow,
    StartWorkflow,
    TerminateExecution,
)
from schemas.common import ExecutionStatus, ParentClosePolicy, RetryPolicy
from schemas.events import ChildReported, EventType, WorkflowTaskFailed
from schemas.outcomes import RejectionCode
from services.engine.domain import ExecutionState, Rejected
from services.engine.workflow_tasks import derived_commands, start_failed_report
from tests.support.domain import (
    BOOM,
    EXEC,
    SECOND,
    T0,
    Stream,
    cancel,
    envelope,
    running,
    signal,
    start,
    terminate,
    types,
)


def task(stream: Stream, *steps: dict[str, Any], task_seq: int | None = None) -> Any:
    """A CompleteWorkflowTask for the stream's current run, from the latest history."""
    return CompleteWorkflowTask(
        **envelope(stream.current.execution_id, None),
        payload=CompleteWorkflowTaskPayload(
            run_id=stream.run,
            task_seq=task_seq if task_seq is not None else stream.current.seq,
            worker_id="w1",
            steps=list(steps),  # type: ignore[arg-type]  # validated from dicts
        ),
    )


def failed_task(stream: Stream, task_seq: int | None = None) -> FailWorkflowTask:
    return FailWorkflowTask(
        **envelope(EXEC, None),
        payload=FailWorkflowTaskPayload(
            run_id=stream.run,
            task_seq=task_seq if task_seq is not None else stream.current.seq,
            failure=BOOM,
        ),
    )


def fire(stream: Stream, timer_id: str, run_id: str | None = None) -> FireTimer:
    return FireTimer(
        **envelope(EXEC, None),
        payload=FireTimerPayload(run_id=run_id or stream.run, timer_id=timer_id),
    )


def child_report(parent: Stream, child_id: str, stage: str, **kw: Any) -> RecordChildWorkflow:
    return RecordChildWorkflow(
        **envelope(EXEC, None),
        payload=ChildReportPayload(
            run_id=parent.run, child_execution_id=child_id, stage=stage, **kw
        ),
    )


ACT_STARTED = {
    "kind": "activity",
    "activity_id": "a1",
    "activity_name": "charge",
    "stage": "started",
}
ACT_DONE = {**ACT_STARTED, "stage": "completed", "result": 42}
TIMER = {"kind": "start_timer", "timer_id": "sleep-1", "duration_seconds": 5}
CHILD = {"kind": "start_child", "child_execution_id": "kid-1", "workflow_name": "ship"}


def advanced() -> Stream:
    """A run a worker has advanced once (an activity ran eagerly)."""
    stream = running()
    stream.when(task(stream, ACT_STARTED, ACT_DONE))
    return stream


# --- CompleteWorkflowTask -------------------------------------------------------------------


def test_a_workflow_task_appends_its_steps_after_the_completion_in_one_commit() -> None:
    stream = running()
    events = stream.when(task(stream, ACT_STARTED, ACT_DONE, TIMER))
    assert types(events) == [
        EventType.WORKFLOW_TASK_COMPLETED,
        EventType.ACTIVITY_TASK_STARTED,
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.TIMER_STARTED,
    ]
    assert {e.seq for e in events} == {2}
    assert events[3].attributes.fire_at_ns == T0 + 2 * SECOND + 5 * SECOND  # type: ignore[union-attr]
    state = stream.current
    assert state.workflow_task_seq == 2
    assert state.timers == {"sleep-1": T0 + 7 * SECOND}
    assert state.activities == {}


def test_a_final_step_closes_the_run_in_the_same_commit() -> None:
    stream = running()
    events = stream.when(task(stream, ACT_STARTED, ACT_DONE, {"kind": "complete", "result": 7}))
    assert events[-1].type is EventType.WORKFLOW_EXECUTION_COMPLETED
    assert stream.status is ExecutionStatus.COMPLETED
    assert stream.current.result is not None and stream.current.result.value == 7


def test_a_final_step_before_the_last_is_refused_by_the_contract() -> None:
    with pytest.raises(ValueError, match="only the last step"):
        CompleteWorkflowTaskPayload(
            run_id="r",
            task_seq=1,
            steps=[{"kind": "complete"}, TIMER],  # type: ignore[list-item]
        )


def test_a_task_from_a_view_older_than_the_last_accepted_one_is_stale() -> None:
    stream = advanced()  # workflow task accepted at seq 2
    stream.when(signal())  # seq 3: a task from seq 1 or 2 may still arrive
    rejection = stream.rejection(task(stream, TIMER, task_seq=1))
    assert rejection.code is RejectionCode.STALE_WORKFLOW_TASK


def test_a_signal_arriving_while_a_task_runs_does_not_make_it_stale() -> None:
    stream = advanced()
    seen = stream.current.seq
    stream.when(signal())
    events = stream.when(task(stream, {"kind": "complete"}, task_seq=seen))
    assert events[-1].type is EventType.WORKFLOW_EXECUTION_COMPLETED


def test_a_task_naming_a_seq_beyond_the_stream_is_invalid() -> None:
    stream = running()
    rejection = stream.rejection(task(stream, task_seq=99))
    assert rejection.code is RejectionCode.INVALID_WORKFLOW_TASK


@pytest.mark.parametrize(
    ("steps", "named"),
    [
        ([ACT_DONE], "steps[0] (activity): activity 'a1' is not running"),
        ([ACT_STARTED, ACT_STARTED], "steps[1] (activity): activity 'a1' is already running"),
        ([TIMER, TIMER], "steps[1] (start_timer): timer 'sleep-1' is already pending"),
        ([{"kind": "cancel_timer", "timer_id": "nope"}], "steps[0] (cancel_timer)"),
        ([{**TIMER, "timer_id": "cancel-deadline"}], "reserved"),
        ([CHILD, CHILD], "steps[1] (start_child): child 'kid-1' is already started"),
        ([{**CHILD, "child_execution_id": EXEC}], "its own child"),
        ([{"kind": "update_completed", "update_id": "u1"}], "update 'u1' is not accepted"),
        (
            [{"kind": "marker", "marker_id": "m", "name": "v"}] * 2,
            "steps[1] (marker): marker 'm' is recorded twice",
        ),
        ([{"kind": "continue_as_new", "new_execution_id": EXEC}], "steps[0] (continue_as_new)"),
    ],
)
def test_a_step_the_state_does_not_allow_rejects_the_whole_task(
    steps: list[dict[str, Any]], named: str
) -> None:
    stream = running()
    rejection = stream.rejection(task(stream, *steps))
    assert rejection.code is RejectionCode.INVALID_WORKFLOW_TASK
    assert named in rejection.message
    assert stream.current.seq == 1  # nothing appended


def test_a_timer_started_and_canceled_in_one_task_is_not_pending() -> None:
    stream = running()
    events = stream.when(task(stream, TIMER, {"kind": "cancel_timer", "timer_id": "sleep-1"}))
    assert types(events)[1:] == [EventType.TIMER_STARTED, EventType.TIMER_CANCELED]
    assert stream.current.timers == {}


def test_an_activity_retry_then_a_later_attempt_completes() -> None:
    stream = running()
    stream.when(
        task(
            stream,
            ACT_STARTED,
            {**ACT_STARTED, "stage": "retrying", "failure": {"message": "x"}},
            {**TIMER, "timer_id": "retry-a1"},
        )
    )
    stream.when(fire(stream, "retry-a1"))
    stream.when(task(stream, {**ACT_STARTED, "attempt": 2}, {**ACT_DONE, "attempt": 2}))
    assert stream.current.activities == {}
    rejection = stream.rejection(task(stream, {**ACT_DONE, "attempt": 3}))
    assert "not running" in rejection.message


def test_an_update_accepted_then_completed_and_a_marker_are_recorded() -> None:
    stream = running()
    events = stream.when(
        task(
            stream,
            {"kind": "update_accepted", "update_id": "u1", "update_name": "raise", "input": 5},
            {"kind": "marker", "marker_id": "m1", "name": "side_effect", "value": "abc"},
            {"kind": "update_completed", "update_id": "u1", "result": 10},
        )
    )
    assert types(events)[1:] == [
        EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
        EventType.MARKER_RECORDED,
        EventType.WORKFLOW_EXECUTION_UPDATE_COMPLETED,
    ]
    assert stream.current.updates == {}


def test_a_workflow_task_for_another_run_or_while_retrying_is_refused() -> None:
    stream = running(retry_policy=RetryPolicy(max_attempts=3))
    other = task(stream)
    stream.when(task(stream, {"kind": "fail", "failure": {"message": "x"}}))
    assert stream.status is ExecutionStatus.RETRYING_AFTER_ERROR
    assert stream.rejection(other).code is RejectionCode.RUN_NOT_ACTIVE


# --- FailWorkflowTask and its retry timer ---------------------------------------------------


def test_a_failed_workflow_task_backs_off_exponentially_and_its_timer_retries_it() -> None:
    stream = running()
    first = stream.when(failed_task(stream))
    second = stream.when(failed_task(stream))
    delays = []
    for events in (first, second):
        (event,) = events
        assert isinstance(event, WorkflowTaskFailed)
        assert event.attributes.retry_at_ns is not None
        delays.append(event.attributes.retry_at_ns - event.timestamp_ns)
    assert delays == [1 * SECOND, 2 * SECOND]
    assert set(stream.current.timers) == {"workflow-task:2", "workflow-task:3"}
    (fired,) = stream.when(fire(stream, "workflow-task:3"))
    assert fired.type is EventType.TIMER_FIRED
    stream.when(task(stream))
    assert stream.current.workflow_task_failures == 0
    assert stream.current.timers == {}  # the older retry is moot
    assert stream.rejection(fire(stream, "workflow-task:2")).code is (
        RejectionCode.TIMER_NOT_PENDING
    )


def test_a_timer_fires_once() -> None:
    stream = running()
    stream.when(task(stream, TIMER))
    stream.when(fire(stream, "sleep-1"))
    assert stream.rejection(fire(stream, "sleep-1")).code is RejectionCode.TIMER_NOT_PENDING


def test_a_timer_of_a_closed_or_older_run_is_not_pending() -> None:
    stream = running()
    stream.when(task(stream, TIMER))
    old_run = stream.run
    stream.when(terminate())
    assert stream.rejection(fire(stream, "sleep-1")).code is RejectionCode.TIMER_NOT_PENDING
    stream.when(start())
    assert stream.rejection(fire(stream, "sleep-1", old_run)).code is (
        RejectionCode.TIMER_NOT_PENDING
    )


# --- cancellation -----------------------------------------------------------------------


def test_cancel_of_a_run_no_worker_advanced_is_immediate() -> None:
    stream = running()
    (event,) = stream.when(cancel())
    assert event.type is EventType.WORKFLOW_EXECUTION_CANCELED
    assert stream.status is ExecutionStatus.CANCELED


def test_cancel_of_an_advanced_run_asks_the_code_and_sets_a_deadline() -> None:
    stream = advanced()
    (event,) = stream.when(cancel())
    assert event.type is EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED
    deadline = event.timestamp_ns + 30 * SECOND
    assert event.attributes.cancel_deadline_ns == deadline  # type: ignore[union-attr]
    assert stream.status is ExecutionStatus.RUNNING
    assert stream.current.timers["cancel-deadline"] == deadline
    assert stream.rejection(cancel()).code is RejectionCode.INVALID_TRANSITION
    # The code cleans up, then acknowledges.
    events = stream.when(task(stream, ACT_STARTED, ACT_DONE, {"kind": "cancel", "reason": "ok"}))
    assert events[-1].type is EventType.WORKFLOW_EXECUTION_CANCELED
    assert stream.rejection(fire(stream, "cancel-deadline")).code is (
        RejectionCode.TIMER_NOT_PENDING
    )


def test_the_cancel_deadline_cancels_a_run_whose_code_did_not_end_it() -> None:
    stream = running(cancel_grace_seconds=2)
    stream.when(task(stream, TIMER))
    (requested,) = stream.when(cancel())
    assert requested.attributes.cancel_deadline_ns == requested.timestamp_ns + 2 * SECOND  # type: ignore[union-attr]
    (canceled,) = stream.when(fire(stream, "cancel-deadline"))
    assert canceled.type is EventType.WORKFLOW_EXECUTION_CANCELED
    assert stream.status is ExecutionStatus.CANCELED


# --- children -----------------------------------------------------------------------------


def parent_with_child(policy: str = "terminate") -> Stream:
    stream = running()
    stream.when(task(stream, {**CHILD, "parent_close_policy": policy}))
    return stream


def test_start_child_records_it_and_derives_its_start_with_parent_and_root() -> None:
    stream = running(root_execution_id="root-0", parent_execution_id="root-0")
    events = stream.when(task(stream, {**CHILD, "input": {"n": 1}}))
    (command,) = derived_commands(events, stream.ctx(), stream.current)
    assert isinstance(command, StartWorkflow)
    assert command.command_id == f"{events[1].event_id}:child"
    assert command.execution_id == "kid-1"
    p = command.payload
    assert (p.parent_execution_id, p.parent_run_id, p.root_execution_id) == (
        EXEC,
        stream.run,
        "root-0",
    )
    assert p.input == {"n": 1} and p.parent_close_policy is ParentClosePolicy.TERMINATE
    assert stream.current.children == {"kid-1": ParentClosePolicy.TERMINATE}


def test_a_child_reports_its_start_and_close_to_the_parent_run() -> None:
    parent = parent_with_child()
    (child_start,) = derived_commands(
        parent.events[-2:], parent.ctx(), parent.current
    )  # the INITIATED
    assert isinstance(child_start, StartWorkflow)
    child = Stream()
    started = child.when(child_start)
    (report,) = derived_commands(started, child.ctx(), child.current)
    assert isinstance(report, RecordChildWorkflow)
    assert report.execution_id == EXEC and report.payload.run_id == parent.run
    assert report.payload.stage == "started" and report.command_id.endswith(":parent")
    parent.when(report)
    closed = child.when(task(child, {"kind": "complete", "result": "shipped"}))
    (close_report,) = derived_commands(closed, child.ctx(), child.current)
    assert isinstance(close_report, RecordChildWorkflow)
    assert close_report.payload.status is ExecutionStatus.COMPLETED
    assert close_report.payload.result == "shipped"
    (event,) = parent.when(close_report)
    assert isinstance(event, ChildReported) and event.type is EventType.CHILD_WORKFLOW_CLOSED
    assert parent.current.children == {}
    assert parent.rejection(close_report).code is RejectionCode.CHILD_NOT_FOUND


def test_a_refused_child_start_is_reported_to_the_parent() -> None:
    parent = parent_with_child()
    (child_start,) = derived_commands(parent.events[-2:], parent.ctx(), parent.current)
    assert isinstance(child_start, StartWorkflow)
    rejection = Rejected(RejectionCode.EXECUTION_ALREADY_RUNNING, "busy")
    report = start_failed_report(child_start, rejection)
    assert report is not None
    assert report.command_id == f"{child_start.command_id}:start-failed"
    (event,) = parent.when(report)
    assert event.type is EventType.CHILD_WORKFLOW_START_FAILED
    assert start_failed_report(start(), rejection) is None


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("terminate", TerminateExecution), ("request_cancel", CancelExecution), ("abandon", None)],
)
def test_closing_a_parent_applies_each_open_childs_policy(policy: str, expected: Any) -> None:
    parent = parent_with_child(policy)
    closed = parent.when(task(parent, {"kind": "complete"}))
    commands = derived_commands(closed, parent.ctx(), parent.current)
    if expected is None:
        assert commands == []
        return
    (command,) = commands
    assert isinstance(command, expected)
    assert command.execution_id == "kid-1"
    assert command.command_id == f"{closed[-1].event_id}:close-child:kid-1"
    assert isinstance(command.payload, ReasonPayload)


def test_a_terminated_child_reports_a_failure_to_its_parent() -> None:
    child = Stream().given(start("kid-1", parent_execution_id=EXEC, parent_run_id="p-run"))
    closed = child.when(
        TerminateExecution(**envelope("kid-1", "bob"), payload=ReasonPayload(reason="stuck"))
    )
    (report,) = derived_commands(closed, child.ctx(), child.current)
    assert isinstance(report, RecordChildWorkflow)
    assert report.payload.status is ExecutionStatus.TERMINATED
    assert report.payload.failure is not None and report.payload.failure.type == "TERMINATED"


def test_old_snapshots_without_worker_fields_still_load() -> None:
    stream = running()
    snapshot = stream.current.model_dump(mode="json", exclude_none=True)
    for name in ("timers", "activities", "children", "updates", "workflow_task_failures"):
        snapshot.pop(name)
    loaded = ExecutionState.model_validate(snapshot)
    assert loaded == stream.current
