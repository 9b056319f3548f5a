"""Execute with `wait_for_result` on a fresh execution id answers from the live events
alone (services/api/start_execution.py): the run it folds equals the projection's, and
whatever the fold cannot vouch for (a gap, a reset's TERMINATED, silence) hands the wait
over to the reading loop instead of answering."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from schemas.common import ExecutionStatus
from schemas.events import Event, closes_run
from services.api.event_fanout import Delivery, EventFanout, Subscription
from services.api.shapes import run_result
from services.api.start_execution import _fold_until_closed
from services.common.readmodels.projection import apply_to_run
from tests.support.domain import (
    activity,
    closed_as,
    complete,
    fail,
    reset,
    retry,
    running,
    signal,
    with_retries,
)


def subscription_with(events: list[Event]) -> Subscription:
    sub = Subscription(events[0].execution_id if events else None, None, 100, {})
    for n, event in enumerate(events):
        sub.offer(Delivery(0, n, event))
    return sub


async def folded(events: list[Event], limit: float = 5.0) -> dict[str, Any] | None:
    deadline = asyncio.get_running_loop().time() + limit
    _, run = await _fold_until_closed(
        cast(EventFanout, None), subscription_with(events), "exec-1", deadline
    )
    return run


def projected(events: list[Event]) -> dict[str, Any] | None:
    run: dict[str, Any] | None = None
    for event in events:
        run = apply_to_run(run, event)
    return run


async def test_a_completed_run_is_answered_as_the_projection_has_it() -> None:
    events = closed_as(ExecutionStatus.COMPLETED).events
    run = await folded(events)
    assert run is not None
    assert run["status"] == "COMPLETED"
    assert run_result(run) == 1
    assert run == projected(events)


async def test_every_terminal_status_but_terminated_is_answered_from_the_fold() -> None:
    for status in (
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELED,
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.CONTINUED_AS_NEW,
    ):
        events = closed_as(status).events
        run = await folded(events)
        assert run is not None and run["status"] == status.value, status


async def test_a_retried_run_is_answered_once_its_retry_completes() -> None:
    stream = with_retries().given(lambda s: fail(s.run))
    stream.given(lambda s: retry(s.run, 2), lambda s: complete(s.run, "second"))
    run = await folded(stream.events)
    assert run is not None
    assert (run["status"], run_result(run)) == ("COMPLETED", "second")
    assert run == projected(stream.events)


async def test_re_delivered_events_are_skipped() -> None:
    events = closed_as(ExecutionStatus.COMPLETED).events
    run = await folded([events[0], events[0], *events[1:], events[-1]])
    assert run == projected(events)


async def test_a_gap_in_the_events_leaves_the_answer_to_a_read() -> None:
    events = closed_as(ExecutionStatus.COMPLETED).events
    assert await folded(events[1:]) is None  # the first event never came
    assert await folded([events[0], *events[2:]]) is None


async def test_a_terminated_run_leaves_the_answer_to_a_read() -> None:
    # A reset's commit opens a new run after the old one's TERMINATED: a read decides.
    stream = with_retries().given(reset(1))
    assert await folded(stream.events) is None
    assert await folded(closed_as(ExecutionStatus.TERMINATED).events) is None


async def test_a_silent_feed_leaves_the_answer_to_a_read() -> None:
    events = with_retries().events  # started, never closed
    assert await folded(events, limit=0.2) is None


async def test_a_waiting_execute_wakes_only_for_the_event_that_closes_the_run() -> None:
    """The wait's subscription buffers the run's other events without waking it; the
    closing event wakes it once, and the answer is the projection's all the same."""
    stream = running().given(
        lambda s: activity(s.run, "started"),
        lambda s: activity(s.run, "completed"),
        lambda s: signal(),
        lambda s: complete(s.run, "done"),
    )
    events = stream.events
    assert len(events) == 5
    sub = Subscription("exec-1", None, 100, {}, wake=closes_run)
    deadline = asyncio.get_running_loop().time() + 5
    waiting = asyncio.create_task(
        _fold_until_closed(cast(EventFanout, None), sub, "exec-1", deadline)
    )
    await asyncio.sleep(0)
    wakes = 0
    original_take = sub.take

    def counting_take() -> list[Delivery]:
        nonlocal wakes
        wakes += 1
        return original_take()

    sub.take = counting_take  # type: ignore[method-assign]
    for n, event in enumerate(events[:-1]):
        sub.offer(Delivery(0, n, event))
        await asyncio.sleep(0.01)
    assert not waiting.done() and wakes == 0
    sub.offer(Delivery(0, len(events), events[-1]))
    _, run = await waiting
    assert wakes == 1
    assert run == projected(events)


async def test_events_that_wake_no_one_are_still_taken_when_the_wait_runs_out() -> None:
    events = with_retries().events  # started, never closed
    sub = Subscription("exec-1", None, 100, {}, wake=closes_run)
    for n, event in enumerate(events):
        sub.offer(Delivery(0, n, event))
    assert [d.event for d in await sub.take_when_woken(0.05)] == events
    assert await sub.take_when_woken(0.05) == []
