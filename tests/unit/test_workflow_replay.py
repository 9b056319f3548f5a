"""The worker SDK's replay, driven through the real domain (tests/support/workflow_sim.py).

Every workflow task rebuilds the instance from the whole history, so each test also
proves that the history it built replays to the same steps.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from runstore.workflows import (
    ActivityError,
    ApplicationError,
    NondeterminismError,
    RetryPolicy,
    activity,
    workflow,
)
from schemas.common import ExecutionStatus
from schemas.events import EventType
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
