"""The execution domain, rule by rule: given earlier commands, when a command, then events.

Every test builds its history by running real commands through `decide` and `evolve`
(see `Stream`), so the histories are the ones the engine would store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from schemas.commands import (
    Command,
    IdReusePolicy,
    StartWorkflow,
)
from schemas.common import ExecutionStatus, Payload, RetryPolicy
from schemas.events import (
    EVENT_LIST_ADAPTER,
    EventType,
    ExecutionContinuedAsNew,
    ExecutionStarted,
    RunReset,
    event_id_for,
)
from schemas.outcomes import RejectionCode
from services.engine.domain import (
    ExecutionState,
    InvalidHistory,
    decide,
    evolve,
    fold,
    successor_commands,
    task_id_for,
)
from tests.support.domain import (
    BOOM,
    EXEC,
    SECOND,
    T0,
    TERMINAL,
    Stream,
    activity,
    attrs,
    cancel,
    closed_as,
    complete,
    continue_as_new,
    custom_task,
    fail,
    reset,
    retry,
    retrying,
    running,
    signal,
    start,
    terminate,
    time_out,
    types,
    with_retries,
)

# --- StartWorkflow ----------------------------------------------------------------------


def test_start_of_a_new_execution_records_everything_a_run_row_needs() -> None:
    stream = Stream()
    policy = RetryPolicy(max_attempts=2)

    [event] = stream.when(
        start(
            user_id="alice",
            workflow_name="order",
            input={"sku": 7},
            deployment_name="prod",
            execution_timeout_seconds=60,
            retry_policy=policy,
            internal=True,
            display_name="Order 7",
            search_keys={"tenant": "acme"},
            workflow_tags=["billing", "eu"],
        )
    )

    assert isinstance(event, ExecutionStarted)
    assert event.run_id == "run-1"
    assert event.workflow_name == "order"
    assert event.root_execution_id == EXEC
    assert event.parent_execution_id is None
    a = attrs(event)
    assert a.input == Payload(value={"sku": 7})
    assert (a.user_id, a.deployment_name, a.display_name) == ("alice", "prod", "Order 7")
    assert (a.internal, a.execution_timeout_seconds, a.retry_policy) == (True, 60, policy)
    assert a.search_keys == {"tenant": "acme"}
    assert a.workflow_tags == ["billing", "eu"]
    assert a.attempt == 1
    assert stream.status is ExecutionStatus.RUNNING
    assert (stream.current.run_count, stream.current.attempt, stream.current.seq) == (1, 1, 1)
    assert stream.current.started == a


def test_start_uses_the_run_id_in_the_payload_when_given() -> None:
    [event] = Stream().when(start(run_id="pre-assigned"))

    assert event.run_id == "pre-assigned"


@pytest.mark.parametrize(
    ("root", "parent", "expected_root"),
    [("root-0", "parent-1", "root-0"), (None, "parent-1", "parent-1"), (None, None, EXEC)],
)
def test_root_defaults_to_the_parent_then_to_the_execution_itself(
    root: str | None, parent: str | None, expected_root: str
) -> None:
    [event] = Stream().when(start(root_execution_id=root, parent_execution_id=parent))

    assert event.root_execution_id == expected_root
    assert event.parent_execution_id == parent


@pytest.mark.parametrize("given", [running, retrying], ids=["running", "retrying"])
def test_start_of_an_open_execution_is_rejected_as_already_running(
    given: Callable[[], Stream],
) -> None:
    rejection = given().rejection(start())

    assert rejection.code is RejectionCode.EXECUTION_ALREADY_RUNNING
    assert EXEC in rejection.message


def test_start_of_a_closed_execution_opens_a_new_run_by_default() -> None:
    stream = closed_as(ExecutionStatus.COMPLETED)
    old_run = stream.run

    [event] = stream.when(start(workflow_name="order-v2"))

    assert event.run_id == "run-3" != old_run
    assert (event.seq, event.event_number, event.index) == (3, 1, 0)
    assert stream.status is ExecutionStatus.RUNNING
    assert stream.current.run_count == 2
    assert stream.current.workflow_name == "order-v2"
    assert stream.current.result is None
    assert stream.current.closed_at_ns is None


@pytest.mark.parametrize("status", TERMINAL)
def test_failed_only_reuse_policy_refuses_only_successful_ends(status: ExecutionStatus) -> None:
    stream = closed_as(status)
    cmd = start(id_reuse_policy=IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY)

    if status in (ExecutionStatus.COMPLETED, ExecutionStatus.CONTINUED_AS_NEW):
        rejection = stream.rejection(cmd)
        assert rejection.code is RejectionCode.EXECUTION_ID_REUSE_REJECTED
        assert status.value in rejection.message
    else:
        stream.when(cmd)
        assert stream.status is ExecutionStatus.RUNNING


@pytest.mark.parametrize("status", TERMINAL)
def test_reject_duplicate_policy_refuses_every_closed_execution(status: ExecutionStatus) -> None:
    rejection = closed_as(status).rejection(start(id_reuse_policy=IdReusePolicy.REJECT_DUPLICATE))

    assert rejection.code is RejectionCode.EXECUTION_ID_REUSE_REJECTED


def test_start_again_with_the_latest_run_id_is_an_invalid_transition() -> None:
    stream = closed_as(ExecutionStatus.FAILED)

    rejection = stream.rejection(start(run_id=stream.run))

    assert rejection.code is RejectionCode.INVALID_TRANSITION


# --- commands on an unknown execution ----------------------------------------------------

ALL_BUT_START: list[Callable[[], Command]] = [
    cancel,
    terminate,
    signal,
    lambda: reset(1),
    lambda: complete("run-1"),
    lambda: fail("run-1"),
    lambda: continue_as_new("run-1"),
    lambda: activity("run-1"),
    lambda: custom_task("run-1"),
    lambda: time_out("run-1"),
    lambda: retry("run-1", 2),
]


@pytest.mark.parametrize("make", ALL_BUT_START)
def test_any_command_but_start_on_an_unknown_execution_is_not_found(
    make: Callable[[], Command],
) -> None:
    cmd = make()

    rejection = Stream().rejection(cmd)

    assert rejection.code is RejectionCode.EXECUTION_NOT_FOUND
    assert EXEC in rejection.message
    assert cmd.type in rejection.message


# --- cancel, terminate, signal ----------------------------------------------------------


def test_cancel_closes_the_run_as_canceled_with_its_reason() -> None:
    stream = running()

    [event] = stream.when(cancel("customer asked"))

    assert event.type is EventType.WORKFLOW_EXECUTION_CANCELED
    assert attrs(event).reason == "customer asked"
    assert stream.status is ExecutionStatus.CANCELED
    assert stream.current.closed_at_ns == event.timestamp_ns


def test_terminate_closes_the_run_as_terminated_with_its_reason() -> None:
    stream = running()

    [event] = stream.when(terminate("runaway"))

    assert event.type is EventType.WORKFLOW_EXECUTION_TERMINATED
    assert attrs(event).reason == "runaway"
    assert stream.status is ExecutionStatus.TERMINATED


def test_signal_is_recorded_without_changing_the_status() -> None:
    stream = running()

    [event] = stream.when(signal("approve", {"by": "carol"}))

    assert event.type is EventType.WORKFLOW_EXECUTION_SIGNALED
    a = attrs(event)
    assert a.signal_name == "approve"
    assert a.input == Payload(value={"by": "carol"})
    assert a.user_id == "carol"
    assert stream.status is ExecutionStatus.RUNNING


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (cancel, ExecutionStatus.CANCELED),
        (terminate, ExecutionStatus.TERMINATED),
        (signal, ExecutionStatus.RETRYING_AFTER_ERROR),
    ],
)
def test_cancel_terminate_and_signal_are_accepted_while_retrying(
    make: Callable[[], Command], status: ExecutionStatus
) -> None:
    stream = retrying()

    stream.when(make())

    assert stream.status is status


@pytest.mark.parametrize("make", [cancel, terminate, signal])
@pytest.mark.parametrize("status", TERMINAL)
def test_cancel_terminate_and_signal_of_a_closed_execution_are_rejected(
    make: Callable[[], Command], status: ExecutionStatus
) -> None:
    rejection = closed_as(status).rejection(make())

    assert rejection.code is RejectionCode.EXECUTION_ALREADY_CLOSED
    assert EXEC in rejection.message
    assert status.value in rejection.message


# --- worker reports ---------------------------------------------------------------------

REPORTS: list[Callable[[str], Command]] = [
    lambda run: complete(run),
    lambda run: fail(run),
    lambda run: continue_as_new(run),
    lambda run: activity(run),
    lambda run: custom_task(run),
]
REPORT_IDS = ["complete", "fail", "continue_as_new", "activity", "custom_task"]


def test_complete_closes_the_run_with_its_result() -> None:
    stream = running()

    [event] = stream.when(complete(stream.run, {"total": 12}))

    assert event.type is EventType.WORKFLOW_EXECUTION_COMPLETED
    assert attrs(event).result == Payload(value={"total": 12})
    assert stream.status is ExecutionStatus.COMPLETED
    assert stream.current.result == Payload(value={"total": 12})


@pytest.mark.parametrize("report", REPORTS, ids=REPORT_IDS)
def test_a_report_for_another_run_is_rejected_as_run_not_active(
    report: Callable[[str], Command],
) -> None:
    rejection = running().rejection(report("run-from-yesterday"))

    assert rejection.code is RejectionCode.RUN_NOT_ACTIVE
    assert "run-from-yesterday" in rejection.message


@pytest.mark.parametrize("report", REPORTS, ids=REPORT_IDS)
def test_a_report_for_a_superseded_run_is_rejected_as_run_not_active(
    report: Callable[[str], Command],
) -> None:
    stream = running().given(signal())
    old_run = stream.run
    stream.given(reset(1))

    rejection = stream.rejection(report(old_run))

    assert rejection.code is RejectionCode.RUN_NOT_ACTIVE


@pytest.mark.parametrize("report", REPORTS, ids=REPORT_IDS)
@pytest.mark.parametrize("status", TERMINAL)
def test_a_report_for_a_closed_run_is_rejected_as_already_closed(
    report: Callable[[str], Command], status: ExecutionStatus
) -> None:
    stream = closed_as(status)

    rejection = stream.rejection(report(stream.run))

    assert rejection.code is RejectionCode.EXECUTION_ALREADY_CLOSED


@pytest.mark.parametrize("report", REPORTS, ids=REPORT_IDS)
def test_a_report_while_retrying_is_rejected_as_run_not_active(
    report: Callable[[str], Command],
) -> None:
    stream = retrying()

    rejection = stream.rejection(report(stream.run))

    assert rejection.code is RejectionCode.RUN_NOT_ACTIVE
    assert "RETRYING_AFTER_ERROR" in rejection.message


@pytest.mark.parametrize(
    ("stage", "event_type"),
    [
        ("started", EventType.ACTIVITY_TASK_STARTED),
        ("completed", EventType.ACTIVITY_TASK_COMPLETED),
        ("retrying", EventType.ACTIVITY_TASK_RETRYING),
        ("failed", EventType.ACTIVITY_TASK_FAILED),
    ],
)
def test_activity_reports_are_recorded_by_stage_without_changing_the_status(
    stage: str, event_type: EventType
) -> None:
    stream = running()

    [event] = stream.when(activity(stream.run, stage, task_id="act-9", attempt=2, failure=BOOM))

    assert event.type is event_type
    a = attrs(event)
    assert (a.task_id, a.activity_name, a.attempt) == ("act-9", "charge", 2)
    assert a.failure == BOOM
    assert stream.status is ExecutionStatus.RUNNING


def test_activity_started_always_carries_input_and_completed_always_carries_result() -> None:
    stream = running()

    started = attrs(stream.when(activity(stream.run, "started"))[0])
    completed = attrs(stream.when(activity(stream.run, "completed", result=5))[0])

    assert started.input == Payload(value=None)
    assert started.result is None
    assert completed.result == Payload(value=5)
    assert completed.input is None


@pytest.mark.parametrize(
    ("stage", "event_type"),
    [
        ("started", EventType.CUSTOM_TASK_STARTED),
        ("in_progress", EventType.CUSTOM_TASK_IN_PROGRESS),
        ("completed", EventType.CUSTOM_TASK_COMPLETED),
        ("failed", EventType.CUSTOM_TASK_FAILED),
        ("timed_out", EventType.CUSTOM_TASK_TIMED_OUT),
        ("canceled", EventType.CUSTOM_TASK_CANCELED),
    ],
)
def test_custom_task_reports_are_recorded_by_stage_without_changing_the_status(
    stage: str, event_type: EventType
) -> None:
    stream = running()

    [event] = stream.when(custom_task(stream.run, stage, payload={"p": 1}, reason="why"))

    assert event.type is event_type
    a = attrs(event)
    assert (a.custom_task_id, a.custom_task_type) == ("ct-1", "review")
    assert a.payload == Payload(value={"p": 1})
    assert a.reason == "why"
    assert stream.status is ExecutionStatus.RUNNING


# --- failure and retry ------------------------------------------------------------------


def test_fail_without_a_retry_policy_closes_the_run_as_failed() -> None:
    stream = running()

    [event] = stream.when(fail(stream.run))

    assert event.type is EventType.WORKFLOW_EXECUTION_FAILED
    assert attrs(event).failure == BOOM
    assert stream.status is ExecutionStatus.FAILED
    assert stream.current.last_failure == BOOM


def test_a_non_retryable_failure_fails_the_run_despite_a_retry_policy() -> None:
    stream = with_retries()

    [event] = stream.when(fail(stream.run, retryable=False))

    assert event.type is EventType.WORKFLOW_EXECUTION_FAILED
    assert stream.status is ExecutionStatus.FAILED


def test_a_retryable_failure_schedules_a_retry_after_the_policy_delay() -> None:
    stream = with_retries(initial_interval_seconds=1.5)
    ctx = stream.ctx()

    [event] = stream.when(fail(stream.run))

    assert event.type is EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED
    a = attrs(event)
    assert (a.failed_attempt, a.failure, a.delay_seconds) == (1, BOOM, 1.5)
    assert a.retry_at_ns == ctx.now_ns + 1_500_000_000
    assert stream.status is ExecutionStatus.RETRYING_AFTER_ERROR
    assert stream.current.retry_at_ns == a.retry_at_ns
    assert stream.current.closed_at_ns is None


def test_retry_timer_starts_the_next_attempt_in_the_same_run() -> None:
    stream = retrying()
    run = stream.run

    [event] = stream.when(retry(run, attempt=2))

    assert event.type is EventType.WORKFLOW_EXECUTION_RETRY_STARTED
    assert attrs(event).attempt == 2
    assert event.run_id == run
    assert (stream.status, stream.current.attempt, stream.run) == (ExecutionStatus.RUNNING, 2, run)
    assert stream.current.retry_at_ns is None


def test_retry_cycle_ends_in_success() -> None:
    stream = retrying().given(lambda s: retry(s.run, 2))

    [event] = stream.when(complete(stream.run, "ok"))

    assert attrs(event).attempt == 2
    assert stream.status is ExecutionStatus.COMPLETED


def test_the_last_allowed_attempt_failing_fails_the_run() -> None:
    stream = with_retries(max_attempts=3, initial_interval_seconds=1, backoff_coefficient=2)
    delays = []
    for attempt in (2, 3):
        [scheduled] = stream.when(fail(stream.run))
        delays.append(attrs(scheduled).delay_seconds)
        stream.when(retry(stream.run, attempt))

    [event] = stream.when(fail(stream.run))

    assert delays == [1, 2]
    assert event.type is EventType.WORKFLOW_EXECUTION_FAILED
    assert attrs(event).attempt == 3
    assert stream.status is ExecutionStatus.FAILED


def test_retry_delay_is_capped_by_the_maximum_interval() -> None:
    stream = with_retries(
        max_attempts=5, initial_interval_seconds=10, maximum_interval_seconds=15
    ).given(lambda s: fail(s.run), lambda s: retry(s.run, 2))

    [event] = stream.when(fail(stream.run))

    assert attrs(event).delay_seconds == 15


@pytest.mark.parametrize("attempt", [None, 1, 3])
def test_retry_for_another_attempt_is_an_invalid_transition(attempt: int | None) -> None:
    stream = retrying()

    rejection = stream.rejection(retry(stream.run, attempt))

    assert rejection.code is RejectionCode.INVALID_TRANSITION
    assert "attempt 2" in rejection.message


def test_retry_of_a_running_run_is_an_invalid_transition() -> None:
    stream = running()

    rejection = stream.rejection(retry(stream.run, 2))

    assert rejection.code is RejectionCode.INVALID_TRANSITION


def test_retry_of_another_run_is_rejected_as_run_not_active() -> None:
    rejection = retrying().rejection(retry("old-run", 2))

    assert rejection.code is RejectionCode.RUN_NOT_ACTIVE


def test_retry_of_a_closed_run_is_rejected_as_already_closed() -> None:
    stream = retrying().given(cancel())

    rejection = stream.rejection(retry(stream.run, 2))

    assert rejection.code is RejectionCode.EXECUTION_ALREADY_CLOSED


# --- timeout ----------------------------------------------------------------------------


@pytest.mark.parametrize("given", [running, retrying], ids=["running", "retrying"])
def test_timeout_timer_closes_an_open_run_as_timed_out(given: Callable[[], Stream]) -> None:
    stream = given()

    [event] = stream.when(time_out(stream.run))

    assert event.type is EventType.WORKFLOW_EXECUTION_TIMED_OUT
    assert stream.status is ExecutionStatus.TIMED_OUT


def test_timed_out_event_names_the_configured_timeout_and_state_knows_the_deadline() -> None:
    stream = running(execution_timeout_seconds=30)
    assert stream.current.deadline_ns == stream.current.started_at_ns + 30 * SECOND

    [event] = stream.when(time_out(stream.run))

    assert attrs(event).timeout_seconds == 30


def test_timeout_of_another_run_is_rejected_as_run_not_active() -> None:
    rejection = running().rejection(time_out("old-run"))

    assert rejection.code is RejectionCode.RUN_NOT_ACTIVE


@pytest.mark.parametrize("status", TERMINAL)
def test_timeout_of_a_closed_run_is_rejected_as_already_closed(status: ExecutionStatus) -> None:
    stream = closed_as(status)

    rejection = stream.rejection(time_out(stream.run))

    assert rejection.code is RejectionCode.EXECUTION_ALREADY_CLOSED


# --- closed executions ------------------------------------------------------------------


@pytest.mark.parametrize("status", TERMINAL)
def test_a_closed_execution_accepts_only_start_and_reset(status: ExecutionStatus) -> None:
    stream = closed_as(status)
    run = stream.run
    refused = [
        cancel(),
        terminate(),
        signal(),
        complete(run),
        fail(run),
        continue_as_new(run),
        activity(run),
        custom_task(run),
        time_out(run),
        retry(run, 2),
    ]

    codes = {stream.rejection(cmd).code for cmd in refused}

    assert codes == {RejectionCode.EXECUTION_ALREADY_CLOSED}
    assert decide(stream.state, reset(1), stream.ctx())
    assert decide(stream.state, start(), stream.ctx())


# --- continue-as-new --------------------------------------------------------------------


def test_continue_as_new_closes_the_run_and_names_the_successor() -> None:
    stream = running()
    ctx = stream.ctx()

    [event] = stream.when(
        continue_as_new(
            stream.run, input={"page": 2}, workflow_name="order-v2", new_execution_id="exec-2"
        )
    )

    assert isinstance(event, ExecutionContinuedAsNew)
    a = attrs(event)
    assert (a.new_execution_id, a.new_execution_run_id) == ("exec-2", ctx.successor_run_id)
    assert (a.workflow_name, a.input) == ("order-v2", Payload(value={"page": 2}))
    assert event.workflow_name == "order"
    assert stream.status is ExecutionStatus.CONTINUED_AS_NEW
    assert stream.current.successor_execution_id == "exec-2"
    assert stream.current.successor_run_id == ctx.successor_run_id


def test_continue_as_new_defaults_to_the_same_workflow_and_a_generated_id() -> None:
    stream = running()
    ctx = stream.ctx()

    [event] = stream.when(continue_as_new(stream.run))

    assert attrs(event).workflow_name == "order"
    assert attrs(event).new_execution_id == ctx.new_execution_id


def test_continue_as_new_into_the_same_execution_id_is_an_invalid_transition() -> None:
    stream = running()

    rejection = stream.rejection(continue_as_new(stream.run, new_execution_id=EXEC))

    assert rejection.code is RejectionCode.INVALID_TRANSITION


def test_successor_command_starts_the_new_execution_with_the_inherited_settings() -> None:
    policy = RetryPolicy(max_attempts=4)
    stream = running(
        user_id="alice",
        parent_execution_id="parent-1",
        root_execution_id="root-0",
        deployment_name="prod",
        retry_policy=policy,
        execution_timeout_seconds=90,
        internal=True,
        display_name="Batch",
        search_keys={"k": "v"},
        workflow_tags=["nightly"],
    )
    events = stream.when(continue_as_new(stream.run, input=[1, 2], new_execution_id="exec-2"))
    ctx = stream.ctx(now_ns=T0 + 2 * SECOND + 5_000)

    [cmd] = successor_commands(events, ctx, stream.state)

    assert isinstance(cmd, StartWorkflow)
    assert cmd.command_id == f"{events[0].event_id}:successor"
    assert cmd.execution_id == "exec-2"
    assert cmd.user_id == "alice"
    assert cmd.issued_at == datetime.fromtimestamp((T0 + 2 * SECOND) / SECOND, UTC).replace(
        microsecond=5
    )
    p = cmd.payload
    assert p.run_id == attrs(events[0]).new_execution_run_id
    assert (p.workflow_name, p.input, p.continued_from_execution_id) == ("order", [1, 2], EXEC)
    assert (p.parent_execution_id, p.root_execution_id) == ("parent-1", "root-0")
    assert (p.deployment_name, p.retry_policy, p.execution_timeout_seconds) == ("prod", policy, 90)
    assert (p.internal, p.display_name, p.search_keys) == (True, "Batch", {"k": "v"})
    assert p.workflow_tags == ["nightly"]
    assert successor_commands(events, ctx, stream.state) == [cmd]


def test_the_successor_starts_as_a_new_stream_that_remembers_its_origin() -> None:
    stream = running()
    events = stream.when(continue_as_new(stream.run, new_execution_id="exec-2"))
    [cmd] = successor_commands(events, stream.ctx(), stream.state)

    [started] = decide(None, cmd, stream.ctx())

    assert isinstance(started, ExecutionStarted)
    assert (started.execution_id, started.seq, started.event_number) == ("exec-2", 1, 1)
    assert started.run_id == attrs(events[0]).new_execution_run_id
    assert started.root_execution_id == EXEC
    assert attrs(started).continued_from_execution_id == EXEC


def test_successor_commands_of_other_commits_are_empty() -> None:
    stream = running()
    events = stream.when(complete(stream.run))

    assert successor_commands(events, stream.ctx(), stream.state) == []


def test_successor_commands_refuse_a_state_of_another_run() -> None:
    stream = running()
    events = stream.when(continue_as_new(stream.run))
    stream.given(start())

    with pytest.raises(ValueError, match="continued as new"):
        successor_commands(events, stream.ctx(), stream.state)


# --- reset ------------------------------------------------------------------------------


def _busy_run() -> Stream:
    """Events 1..6 of run-1: started, activity, signal, custom task, activity, signal."""
    return running(input={"n": 1}, deployment_name="prod").given(
        lambda s: activity(s.run, "completed", task_id="a-1"),  # 2
        signal("first", 1),  # 3
        lambda s: custom_task(s.run, "completed", task_id="c-1"),  # 4
        lambda s: activity(s.run, "completed", task_id="a-2"),  # 5
        signal("second", 2),  # 6
    )


def test_reset_of_an_open_run_terminates_it_then_replays_into_a_new_run() -> None:
    stream = _busy_run()
    old_run = stream.run
    old_events = list(stream.events)
    ctx = stream.ctx()

    events = stream.when(reset(4, reason="bad deploy"))

    assert stream.events[: len(old_events)] == old_events
    assert [(e.run_id, e.event_number, e.type) for e in events] == [
        (old_run, 7, EventType.WORKFLOW_EXECUTION_TERMINATED),
        (ctx.new_run_id, 1, EventType.WORKFLOW_RUN_RESET),
        (ctx.new_run_id, 2, EventType.WORKFLOW_EXECUTION_STARTED),
        (ctx.new_run_id, 3, EventType.ACTIVITY_TASK_COMPLETED),
        (ctx.new_run_id, 4, EventType.WORKFLOW_EXECUTION_SIGNALED),
        (ctx.new_run_id, 5, EventType.CUSTOM_TASK_COMPLETED),
        (ctx.new_run_id, 6, EventType.WORKFLOW_EXECUTION_SIGNALED),
    ]
    assert attrs(events[0]).reason == "reset: bad deploy"
    assert {e.seq for e in events} == {7}
    assert [e.index for e in events] == list(range(7))
    reset_event = events[1]
    assert isinstance(reset_event, RunReset)
    assert attrs(reset_event).previous_run_id == old_run
    assert attrs(reset_event).event_id == 4
    assert (stream.run, stream.status) == (ctx.new_run_id, ExecutionStatus.RUNNING)
    assert (stream.current.run_count, stream.current.run_event_count) == (2, 6)
    assert stream.current.reset_from_run_id == old_run
    assert stream.current.reset_event_id == 4


def test_reset_copies_facts_up_to_the_point_and_every_signal() -> None:
    stream = _busy_run()
    old = stream.run_history()

    events = stream.when(reset(4))

    copies = events[3:]
    originals = [old[1], old[2], old[3], old[5]]
    assert [c.attributes for c in copies] == [o.attributes for o in originals]
    assert all(c.command_id == events[0].command_id for c in copies)
    assert all(c.timestamp_ns == events[0].timestamp_ns for c in copies)


def test_reset_restarts_with_the_old_started_attributes_at_attempt_one() -> None:
    stream = with_retries().given(lambda s: fail(s.run), lambda s: retry(s.run, 2))
    assert stream.current.attempt == 2
    old_started = stream.current.started

    events = stream.when(reset(1))

    started = events[2]
    assert isinstance(started, ExecutionStarted)
    assert started.attributes == old_started.model_copy(
        update={"task_id": task_id_for(started.run_id, 2), "attempt": 1}
    )
    assert EventType.WORKFLOW_EXECUTION_RETRY_SCHEDULED not in types(events)
    assert EventType.WORKFLOW_EXECUTION_RETRY_STARTED not in types(events)
    assert (stream.current.attempt, stream.current.retry_at_ns) == (1, None)


def test_reset_of_a_closed_run_opens_a_new_run_without_terminating_anything() -> None:
    stream = _busy_run().given(lambda s: complete(s.run, "done"))

    events = stream.when(reset(2, reason=None))

    assert types(events) == [
        EventType.WORKFLOW_RUN_RESET,
        EventType.WORKFLOW_EXECUTION_STARTED,
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
    ]
    assert stream.status is ExecutionStatus.RUNNING
    assert stream.current.result is None


def test_reset_to_the_terminal_event_replays_every_fact_but_not_the_close() -> None:
    stream = _busy_run().given(lambda s: fail(s.run))

    events = stream.when(reset(7))

    assert types(events)[2:] == [
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
        EventType.CUSTOM_TASK_COMPLETED,
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.WORKFLOW_EXECUTION_SIGNALED,
    ]


def test_reset_excluding_signals_copies_no_signal() -> None:
    stream = _busy_run()

    events = stream.when(reset(5, exclude_signals=True, exclude_updates=True))

    assert EventType.WORKFLOW_EXECUTION_SIGNALED not in types(events)
    assert types(events)[3:] == [
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.CUSTOM_TASK_COMPLETED,
        EventType.ACTIVITY_TASK_COMPLETED,
    ]
    flags = events[1].attributes
    assert (flags.exclude_signals, flags.exclude_updates) == (True, True)


@pytest.mark.parametrize("point", [7, 100])
def test_reset_beyond_the_run_history_is_an_invalid_reset_point(point: int) -> None:
    rejection = _busy_run().rejection(reset(point))

    assert rejection.code is RejectionCode.INVALID_RESET_POINT
    assert f"event {point}" in rejection.message
    assert "1..6" in rejection.message


def test_reset_before_the_started_event_of_a_reset_run_is_an_invalid_reset_point() -> None:
    stream = _busy_run().given(reset(2))

    rejection = stream.rejection(reset(1))

    assert rejection.code is RejectionCode.INVALID_RESET_POINT
    stream.when(reset(2))
    assert stream.current.run_count == 3


def test_reset_twice_keeps_event_numbers_contiguous_in_each_run() -> None:
    stream = _busy_run().given(reset(3), reset(4))

    for run in {e.run_id for e in stream.events}:
        numbers = [e.event_number for e in stream.events if e.run_id == run]
        assert numbers == list(range(1, len(numbers) + 1))


def test_reset_needs_the_latest_run_history_in_the_context() -> None:
    stream = _busy_run()

    with pytest.raises(ValueError, match=r"ctx\.history"):
        decide(stream.state, reset(2), stream.ctx(history=tuple(stream.events[:3])))


def test_reset_into_the_latest_run_id_is_an_invalid_transition() -> None:
    stream = _busy_run()

    rejection = stream.rejection(reset(2), new_run_id=stream.run)

    assert rejection.code is RejectionCode.INVALID_TRANSITION


# --- stamping ---------------------------------------------------------------------------


def test_every_event_is_stamped_with_its_commit_run_and_position() -> None:
    stream = _busy_run().given(reset(3))

    for commit_seq in range(1, 8):
        commit = [e for e in stream.events if e.seq == commit_seq]
        assert [e.index for e in commit] == list(range(len(commit)))
        assert len({e.command_id for e in commit}) == 1
        assert {e.timestamp_ns for e in commit} == {T0 + commit_seq * SECOND}
    for e in stream.events:
        assert e.event_id == event_id_for(EXEC, e.seq, e.index)
        assert (e.execution_id, e.workflow_name, e.root_execution_id) == (EXEC, "order", EXEC)
    assert [e.event_number for e in stream.run_history("run-1")] == list(range(1, 8))
    assert [e.event_number for e in stream.run_history("run-7")] == [1, 2, 3, 4, 5]


def test_commits_number_from_one_and_the_seq_continues_across_runs() -> None:
    stream = closed_as(ExecutionStatus.CANCELED).given(start(), signal())

    assert [e.seq for e in stream.events] == [1, 2, 3, 4]
    assert [e.event_number for e in stream.events] == [1, 2, 1, 2]


def test_workflow_level_events_get_a_task_id_from_run_and_event_number() -> None:
    stream = with_retries().given(lambda s: fail(s.run), lambda s: retry(s.run, 2))
    stream.given(lambda s: complete(s.run))

    task_ids = [attrs(e).task_id for e in stream.events]

    assert task_ids == [task_id_for("run-1", n) for n in (1, 2, 3, 4)]
    assert task_id_for("run-1", 3) == "run-1:3"


def test_decide_refuses_a_command_for_another_execution() -> None:
    with pytest.raises(ValueError, match="applied to"):
        decide(running().state, start(execution_id="other"), Stream().ctx())


# --- evolve, fold, snapshots ------------------------------------------------------------


def test_fold_of_nothing_is_no_state_and_fold_from_a_snapshot_continues_it() -> None:
    stream = _busy_run().given(reset(3), lambda s: complete(s.run))
    snapshot = fold(stream.events[:4])

    assert fold([]) is None
    assert fold(stream.events[4:], snapshot) == stream.state == fold(stream.events)


def test_state_survives_a_json_snapshot_round_trip() -> None:
    stream = _busy_run().given(reset(3))
    stream = stream.given(lambda s: continue_as_new(s.run, input={"x": [1, None, "a"]}))

    restored = ExecutionState.model_validate_json(stream.current.model_dump_json())
    from_dict = ExecutionState.model_validate(stream.current.model_dump(mode="json"))

    assert restored == stream.state == from_dict


def test_events_survive_a_json_round_trip_and_fold_the_same() -> None:
    stream = _busy_run().given(reset(3), lambda s: fail(s.run))

    reloaded = EVENT_LIST_ADAPTER.validate_json(EVENT_LIST_ADAPTER.dump_json(stream.events))

    assert reloaded == stream.events
    assert fold(reloaded) == stream.state


def test_a_stream_must_begin_with_a_started_event() -> None:
    stream = running().given(signal())

    with pytest.raises(InvalidHistory, match="starts with"):
        fold(stream.events[1:])


def test_evolve_refuses_a_gap_in_event_numbers() -> None:
    stream = running().given(signal(), signal())

    with pytest.raises(InvalidHistory, match="event_number"):
        fold([stream.events[0], stream.events[2].model_copy(update={"seq": 2})])


def test_evolve_refuses_a_gap_in_seq() -> None:
    stream = running().given(signal(), signal())

    with pytest.raises(InvalidHistory, match="seq"):
        fold([stream.events[0], stream.events[2]])


def test_evolve_refuses_events_after_the_end_of_a_run() -> None:
    stream = running().given(cancel())
    late = stream.events[1].model_copy(update={"seq": 3, "event_number": 3})

    with pytest.raises(InvalidHistory, match="follows the end"):
        evolve(stream.state, late)


def test_evolve_refuses_a_second_open_run() -> None:
    stream = running()
    other = stream.events[0].model_copy(update={"seq": 2, "run_id": "run-x"})

    with pytest.raises(InvalidHistory, match="still RUNNING"):
        evolve(stream.state, other)


def test_evolve_refuses_an_event_of_another_execution() -> None:
    stream = running()
    foreign = stream.events[0].model_copy(update={"execution_id": "other"})

    with pytest.raises(InvalidHistory, match="belongs to"):
        evolve(stream.state, foreign)


def test_rejection_names_its_code_execution_run_and_status() -> None:
    stream = closed_as(ExecutionStatus.COMPLETED)

    rejection = stream.rejection(cancel())

    assert rejection.message == (
        f"CancelExecution: execution {EXEC!r} (run 'run-1', COMPLETED) is already closed"
    )
    assert str(rejection) == f"execution_already_closed: {rejection.message}"
