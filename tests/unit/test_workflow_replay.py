"""The worker SDK's replay, driven through the real domain (tests/support/workflow_sim.py).

Every workflow task rebuilds the instance from the whole history, so each test also
proves that the history it built replays to the same steps.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runstore.workflows import (
    ActivityError,
    ApplicationError,
    NondeterminismError,
    RetryPolicy,
    Worker,
    activity,
    workflow,
)
from runstore.workflows._history import RunHistory
from schemas.commands import ActivityReportPayload, CompleteWorkflowTask, RecordActivityTask
from schemas.commits import Commit
from schemas.common import ExecutionStatus
from schemas.events import EventType
from schemas.tasks import WorkflowTask
from services.common.memory_commit_log import MemoryCommitLog
from services.engine.domain import Rejected
from tests.support.workflow_sim import WorkflowSim

CALLS: list[str] = []


@activity
async def double(n: int) -> int:
    CALLS.append(f"double:{n}")
    return n * 2


FLAKY: dict[str, int] = {}


@activity(retry_policy=RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=3))
async def flaky(key: str) -> str:
    FLAKY[key] = FLAKY.get(key, 0) + 1
    if FLAKY[key] < 3:
        raise RuntimeError(f"boom {FLAKY[key]}")
    return f"ok after {FLAKY[key]}"


@activity(retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(seconds=1)))
async def always_fails(key: str) -> str:
    raise ApplicationError("card declined", type="Declined")


@workflow.define(name="doubler")
class Doubler:
    @workflow.run
    async def run(self, n: int) -> int:
        a = await workflow.execute_activity(double, n)
        b = await double(a)  # an activity called directly runs as an activity too
        return a + b


@workflow.define(name="sleeper")
class Sleeper:
    @workflow.run
    async def run(self, seconds: float) -> str:
        before = workflow.now()
        await workflow.sleep(seconds)
        return f"slept from {before.isoformat()} to {workflow.now().isoformat()}"


@workflow.define(name="approval")
class Approval:
    def __init__(self) -> None:
        self.votes: list[str] = []
        self.approved = False

    @workflow.run
    async def run(self, needed: int) -> dict[str, Any]:
        await workflow.wait_condition(lambda: len(self.votes) >= needed)
        return {"votes": self.votes, "id": str(workflow.uuid4())}

    @workflow.signal
    def vote(self, who: str) -> None:
        self.votes.append(who)

    @workflow.query
    def status(self) -> dict[str, Any]:
        return {"votes": list(self.votes)}


@workflow.define(name="fanout")
class FanOut:
    @workflow.run
    async def run(self, items: list[int]) -> list[int]:
        return list(await asyncio.gather(*(double(i) for i in items)))


@workflow.define(name="retrier")
class Retrier:
    @workflow.run
    async def run(self, key: str) -> str:
        return str(await flaky(key))


@workflow.define(name="saga")
class Saga:
    def __init__(self) -> None:
        self.compensated = False

    @workflow.run
    async def run(self, key: str) -> str:
        try:
            await always_fails(key)
        except ActivityError:
            await double(1)  # the compensating step
            self.compensated = True
            raise ApplicationError("order failed, compensated", non_retryable=True) from None
        return "unreachable"


@workflow.define(name="cancellable")
class Cancellable:
    @workflow.run
    async def run(self, _: Any) -> str:
        try:
            await workflow.sleep(3600)
        except asyncio.CancelledError:
            await double(21)  # compensation runs after the cancel request
            raise
        return "slept"


async def test_activities_run_once_and_their_results_replay() -> None:
    CALLS.clear()
    sim = WorkflowSim([Doubler], [double])
    sim.start("doubler", 5)
    await sim.run_to_end()
    assert sim.state is not None and sim.state.status == ExecutionStatus.COMPLETED
    assert sim.state.result is not None and sim.state.result.value == 5 * 2 + 5 * 4
    assert CALLS == ["double:5", "double:10"]
    # A replay of the closed history runs no activity again.
    sim.replay()
    assert CALLS == ["double:5", "double:10"]


async def test_a_durable_sleep_is_a_timer_and_now_follows_the_history() -> None:
    sim = WorkflowSim([Sleeper])
    sim.start("sleeper", 30)
    await sim.task()
    assert sim.pending_timers() == ["t1"]
    started = next(e for e in sim.events if e.type == EventType.TIMER_STARTED)
    assert started.attributes.duration_seconds == 30  # type: ignore[union-attr]
    sim.fire_timers()
    await sim.task()
    assert sim.state is not None and sim.state.status == ExecutionStatus.COMPLETED
    result = sim.state.result.value  # type: ignore[union-attr]
    assert (
        result.startswith("slept from")
        and result.split(" to ")[0] != "slept from " + result.split(" to ")[1]
    )


async def test_signals_reach_the_handler_in_order_and_wake_a_wait_condition() -> None:
    sim = WorkflowSim([Approval])
    sim.start("approval", 2)
    sim.signal("vote", "ann")  # sent before any worker ran the code
    await sim.task()
    assert sim.state is not None and sim.state.is_open
    live = sim.replay()
    live.go_live()  # as a worker answering a query: the signal is delivered first
    assert live.query("status", None) == {"votes": ["ann"]}
    sim.signal("vote", "bob")
    await sim.task()
    assert sim.state.status == ExecutionStatus.COMPLETED
    result = sim.state.result.value  # type: ignore[union-attr]
    assert result["votes"] == ["ann", "bob"]
    # uuid4 is deterministic: a replay of the run yields the same id.
    assert sim.replay().finished


RECEIPTS: list[int] = []


@activity
async def charge(n: int) -> int:
    RECEIPTS.append(n)
    return len(RECEIPTS)  # a receipt number: what a second charge would change


@workflow.define(name="pay")
class Pay:
    def __init__(self) -> None:
        self.receipt: int | None = None

    @workflow.run
    async def run(self, n: int) -> int:
        self.receipt = await workflow.execute_activity(charge, n)
        return self.receipt

    @workflow.query
    def receipt_no(self) -> int | None:
        return self.receipt


def _commit_of(sim: WorkflowSim, command_id: str, command_type: str, events: list[Any]) -> Commit:
    """The commit the engine would store for `events` (the state as a replay reads it)."""
    state = sim.state
    assert state is not None and state.started is not None
    return Commit(
        execution_id=sim.execution_id,
        seq=events[0].seq,
        command_id=command_id,
        command_type=command_type,
        run_id=events[0].run_id,
        events=events,
        committed_at=datetime.now(UTC),
        state={
            "started": {"input": {"value": state.started.input.value}},
            "attempt": state.attempt,
        },
    )


def _first_task(sim: WorkflowSim, workflow_name: str, arg: Any) -> WorkflowTask:
    """The run task the engine publishes with an execution's start (it carries the start)."""
    started = sim.events[0]
    return WorkflowTask(
        task_id=started.event_id,
        kind="run",
        execution_id=sim.execution_id,
        run_id=started.run_id,
        seq=1,
        workflow_name=workflow_name,
        input=arg,
        timestamp_ns=started.timestamp_ns,
    )


class _SlowEngine:
    """Stores each report the worker sends 50 ms later, as the engine does after its
    fetch and its round; the commits go where the worker reads its history."""

    def __init__(self, sim: WorkflowSim, log: MemoryCommitLog) -> None:
        self.sim, self.log = sim, log
        self.sent: list[tuple[str, Any]] = []

    def commit(self, command: Any) -> None:
        events = self.sim.apply(command)
        self.log.add([_commit_of(self.sim, command.command_id, "CompleteWorkflowTask", events)])

    async def send(self, topic: str, *, key: bytes, value: bytes, headers: Any = None) -> None:
        self.sent.append((topic, json.loads(value)))
        if topic.endswith("commands"):
            command = CompleteWorkflowTask.model_validate_json(value)
            asyncio.get_running_loop().call_later(0.05, self.commit, command)

    async def flush(self) -> None:
        return None


@pytest.mark.parametrize("same_batch", [True, False])
async def test_a_query_right_after_a_run_closes_does_not_run_its_code_again(
    same_batch: bool,
) -> None:
    # The query comes before the engine has stored the closing report: replaying the
    # history then (without the close) would run the activity a second time and answer
    # from that run. The worker answers from the run it reported.
    RECEIPTS.clear()
    sim = WorkflowSim([Pay], [charge])
    log = MemoryCommitLog()
    engine = _SlowEngine(sim, log)
    sim.start("pay", 7)
    log.add([_commit_of(sim, "start", "StartWorkflow", list(sim.events))])
    started = sim.events[0]
    worker = Worker([Pay], [charge])
    worker.attach(RunHistory(log, worker.activities, 3.0), engine)  # type: ignore[arg-type]
    run = _first_task(sim, "pay", 7)
    query = WorkflowTask(
        task_id="query:q1",
        kind="query",
        execution_id=sim.execution_id,
        run_id=started.run_id,
        seq=1,
        workflow_name="pay",
        request_id="q1",
        name="receipt_no",
    )
    tasks = [run.model_dump_json().encode(), query.model_dump_json().encode()]
    if same_batch:
        await worker.handle(tasks)
    else:
        await worker.handle(tasks[:1])
        await worker.handle(tasks[1:])
    await asyncio.sleep(0.1)
    reports = [v for topic, v in engine.sent if topic.endswith("commands")]
    replies = [v for topic, v in engine.sent if topic.endswith("replies")]
    assert RECEIPTS == [7]
    assert len(reports) == 1
    assert replies and replies[0].get("result") == 1
    assert sim.state.status == ExecutionStatus.COMPLETED


async def test_concurrent_activities_gather_and_replay_in_recorded_order() -> None:
    CALLS.clear()
    sim = WorkflowSim([FanOut], [double])
    sim.start("fanout", [1, 2, 3])
    await sim.run_to_end()
    assert sim.state is not None and sim.state.result is not None
    assert sim.state.result.value == [2, 4, 6]
    assert sorted(CALLS) == ["double:1", "double:2", "double:3"]


async def test_a_failing_activity_is_retried_after_a_durable_back_off() -> None:
    FLAKY.clear()
    sim = WorkflowSim([Retrier], [flaky])
    sim.start("retrier", "k")
    await sim.run_to_end()
    assert sim.state is not None and sim.state.status == ExecutionStatus.COMPLETED
    assert sim.state.result is not None and sim.state.result.value == "ok after 3"
    types = sim.types()
    assert types.count("ACTIVITY_TASK_RETRYING") == 2
    assert types.count("TIMER_FIRED") == 2
    assert FLAKY["k"] == 3


async def test_an_exhausted_activity_lets_the_code_compensate() -> None:
    CALLS.clear()
    sim = WorkflowSim([Saga], [always_fails, double])
    sim.start("saga", "o-1")
    await sim.run_to_end()
    assert sim.state is not None and sim.state.status == ExecutionStatus.FAILED
    assert "ACTIVITY_TASK_FAILED" in sim.types()
    assert CALLS == ["double:1"]


async def test_cancellation_lets_the_code_clean_up_before_the_run_is_canceled() -> None:
    CALLS.clear()
    sim = WorkflowSim([Cancellable], [double])
    sim.start("cancellable", None)
    await sim.task()
    sim.cancel()
    assert sim.state is not None and sim.state.is_open  # a worker ran it: cancel is a request
    await sim.task()
    assert sim.state.status == ExecutionStatus.CANCELED
    assert CALLS == ["double:21"]


async def test_code_that_changed_its_path_fails_with_a_nondeterminism_error() -> None:
    sim = WorkflowSim([Doubler], [double])
    sim.start("doubler", 1)
    await sim.task()  # records activity a1 = double, then a2 = double, completes
    # The history now says `double`; deploy code that calls another activity first.

    @activity(name="triple")
    async def triple(n: int) -> int:
        return n * 3

    @workflow.define(name="doubler")
    class Changed:
        @workflow.run
        async def run(self, n: int) -> int:
            return int(await workflow.execute_activity(triple, n))

    changed = WorkflowSim([Changed], [triple])
    changed.state, changed.events = sim.state, sim.events
    with pytest.raises(NondeterminismError, match="triple"):
        changed.replay()


# --- detached activities: outcomes reported on their own, deadlines ------------------

HELD: dict[str, asyncio.Event] = {}


@activity(start_to_close_timeout=timedelta(seconds=30))
async def held(key: str) -> str:
    CALLS.append(f"held:{key}:{activity.info().attempt}")
    await HELD[key].wait()
    return f"{key} done"


@workflow.define(name="holder")
class Holder:
    @workflow.run
    async def run(self, key: str) -> str:
        return str(await held(key))


async def test_an_activity_past_the_eager_window_reports_itself_and_the_code_resumes() -> None:
    CALLS.clear()
    sim = WorkflowSim([Doubler], [double], eager_seconds=0)  # every activity detaches
    sim.start("doubler", 5)
    await sim.task()
    assert sim.state is not None and sim.state.is_open
    assert sim.types()[-2:] == ["ACTIVITY_TASK_STARTED", "TIMER_STARTED"]
    assert sim.pending_timers() == ["activity:a1:1:1"]  # its deadline
    await sim.run_to_end()
    assert sim.state.status == ExecutionStatus.COMPLETED
    assert sim.state.result is not None and sim.state.result.value == 5 * 2 + 5 * 4
    assert CALLS == ["double:5", "double:10"]
    # Each outcome came as RecordActivityTask and the next task canceled its deadline.
    assert sim.types().count("ACTIVITY_TASK_COMPLETED") == 2
    assert sim.types().count("TIMER_CANCELED") == 2
    assert sim.pending_timers() == []
    sim.replay()  # the history of detached activities replays too


async def test_a_deadline_with_the_attempt_alive_here_is_renewed() -> None:
    CALLS.clear()
    HELD.clear()
    HELD["renew"] = asyncio.Event()
    sim = WorkflowSim([Holder], [held], eager_seconds=0)
    sim.start("holder", "renew")
    await sim.task()
    await asyncio.sleep(0)  # the attempt starts in the executor
    sim.fire_timers(deadlines=True)
    await sim.task()
    assert sim.pending_timers() == ["activity:a1:1:2"]  # renewed, not timed out
    HELD["renew"].set()
    await sim.run_to_end()
    assert sim.state is not None and sim.state.status == ExecutionStatus.COMPLETED
    assert CALLS == ["held:renew:1"]
    assert "ACTIVITY_TASK_RETRYING" not in sim.types()


async def test_a_deadline_after_the_worker_died_times_the_attempt_out_and_retries_it() -> None:
    CALLS.clear()
    HELD.clear()
    HELD["crash"] = asyncio.Event()
    sim = WorkflowSim([Holder], [held], eager_seconds=0)
    sim.start("holder", "crash")
    await sim.task()
    await asyncio.sleep(0)
    sim.restart_worker()  # attempt 1 dies with its worker: it never reports
    HELD["crash"].set()
    sim.fire_timers(deadlines=True)
    await sim.task()  # the new worker does not run attempt 1: timed out
    retrying = [e for e in sim.events if e.type == EventType.ACTIVITY_TASK_RETRYING]
    assert len(retrying) == 1
    failure = retrying[0].attributes.failure  # type: ignore[union-attr]
    assert failure is not None and failure.type == "ActivityTimeoutError"
    # Had attempt 1 survived somewhere, its late outcome is refused by the engine.
    late = RecordActivityTask(
        command_id="late",
        execution_id=sim.execution_id,
        issued_at=datetime.now(UTC),
        payload=ActivityReportPayload(
            run_id=sim.state.run_id,
            stage="completed",
            task_id="a1",
            activity_name="held",
            attempt=1,
            result="crash done",
        ),
    )
    with pytest.raises(Rejected, match="attempt 1 is not running"):
        sim.apply(late)
    await sim.run_to_end()  # back-off timer, attempt 2 (detached, reports), result
    assert sim.state is not None and sim.state.status == ExecutionStatus.COMPLETED
    assert sim.state.result is not None and sim.state.result.value == "crash done"
    assert CALLS == ["held:crash:1", "held:crash:2"]
    sim.replay()


@workflow.define(name="three-steps")
class ThreeSteps:
    @workflow.run
    async def run(self, n: int) -> list[int]:
        return [await double(n), await double(n + 1), await double(n + 2)]


async def test_a_reset_returns_copied_outcomes_and_reruns_the_attempt_cut_off() -> None:
    CALLS.clear()
    sim = WorkflowSim([ThreeSteps], [double])
    sim.start("three-steps", 1)
    await sim.run_to_end()
    assert sim.state is not None and sim.state.status == ExecutionStatus.COMPLETED
    assert CALLS == ["double:1", "double:2", "double:3"]
    # Reset to just after a2 STARTED: a1 is copied completed, a2 copied as running.
    a2_started = next(
        e
        for e in sim.run_events()
        if e.type == EventType.ACTIVITY_TASK_STARTED and e.attributes.task_id == "a2"  # type: ignore[union-attr]
    )
    sim.reset(a2_started.event_number)
    CALLS.clear()
    await sim.run_to_end()
    assert sim.state.status == ExecutionStatus.COMPLETED
    assert sim.state.result is not None and sim.state.result.value == [2, 4, 6]
    assert CALLS == ["double:2", "double:3"]  # a1 not run again; a2 re-run, then a3
    types = [e.type.value for e in sim.run_events()]
    assert types.count("ACTIVITY_TASK_STARTED") == 3  # a1, a2 copied; a3 new: no duplicate
    sim.replay()


@workflow.define(name="clock")
class Clock:
    @workflow.run
    async def run(self, n: int) -> dict[str, Any]:
        return {"now": workflow.now().isoformat(), "double": await double(n)}


class _Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, *, key: bytes, value: bytes, headers: Any = None) -> None:
        self.sent.append(value)

    async def flush(self) -> None:
        return None


async def test_an_executions_first_task_runs_without_reading_the_history() -> None:
    sim = WorkflowSim([Clock], [double])
    sim.start("clock", 3)
    started = sim.events[0]
    worker = Worker([Clock], [double])
    producer = _Producer()
    # An empty commit log: had the worker read the history it would find no start.
    worker.attach(RunHistory(MemoryCommitLog(), worker.activities, 0.0), producer)  # type: ignore[arg-type]
    task = _first_task(sim, "clock", 3)
    await worker.handle([task.model_dump_json().encode()])
    [report] = producer.sent
    sim.apply(CompleteWorkflowTask.model_validate_json(report))  # the engine takes it
    assert sim.state is not None and sim.state.status == ExecutionStatus.COMPLETED
    # workflow.now() is the STARTED event's time, as a replay from the history has it.
    assert sim.state.result is not None and sim.state.result.value == {
        "now": datetime.fromtimestamp(started.timestamp_ns / 1e9, UTC).isoformat(),
        "double": 6,
    }
    assert sim.replay().finished
