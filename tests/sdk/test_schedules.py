"""Schedules through the official SDK (`client.workflows.schedules`), on a stack with the
timers service, in separate-users mode (a schedule is its creator's)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from mistralai.client import Mistral
from pymongo import MongoClient

from tests.support.eventually import wait_until
from tests.support.kafka import command, produce
from tests.support.sdk import status_of
from tests.support.stack import TIMERS_STACK, Stack, StackWith


@pytest.fixture(scope="module")
def stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(services=TIMERS_STACK, RUNSTORE_API_ACCESS_MODE="separate") as stack:
        yield stack


@pytest.fixture(scope="module")
def alice(stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=stack.api_url)


@pytest.fixture(scope="module")
def bob(stack: Stack) -> Mistral:
    return Mistral(api_key="bob-key", server_url=stack.api_url)


def runs_of(client: Mistral, schedule_id: str) -> list[Any]:
    page = client.workflows.runs.list_runs(search_key=[f"schedule_id==:{schedule_id}"])
    rows: list[Any] = []
    while page is not None:
        rows += page.result.executions
        page = page.next()
    return rows


def test_sdk_creates_lists_pauses_resumes_triggers_updates_and_deletes_a_schedule(
    alice: Mistral,
) -> None:
    schedules = alice.workflows.schedules
    created = schedules.schedule_workflow(
        workflow_identifier="nightly",
        schedule_id="nightly-report",
        schedule={
            "input": {"report": "sales"},
            "cron_expressions": ["0 3 * * *"],
            "time_zone_name": "Europe/Paris",
            "jitter": "30s",
            "policy": {"overlap": 2, "catchup_window_seconds": 600},
        },
    )
    assert created.schedule_id == "nightly-report"
    got = schedules.get_schedule(schedule_id="nightly-report")
    assert got.workflow_name == "nightly" and got.paused is False
    assert got.cron_expressions == ["0 3 * * *"] and got.time_zone_name == "Europe/Paris"
    assert got.policy is not None and got.policy.overlap == 2
    assert got.future_executions
    # 03:00 in Paris is 01:00 or 02:00 UTC depending on the season.
    assert all(f.scheduled_at.hour in (1, 2) for f in got.future_executions)

    listed = schedules.get_schedules(workflow_name="nightly")
    assert [s.schedule_id for s in listed.result.schedules] == ["nightly-report"]

    schedules.pause_schedule(schedule_id="nightly-report", note="maintenance")
    paused = schedules.get_schedule(schedule_id="nightly-report")
    assert paused.paused is True and paused.note == "maintenance"
    assert [s.schedule_id for s in schedules.get_schedules(status="paused").result.schedules] == [
        "nightly-report"
    ]
    schedules.resume_schedule(schedule_id="nightly-report", note="back")
    resumed = schedules.get_schedule(schedule_id="nightly-report")
    assert resumed.paused is False and resumed.note == "back"

    schedules.trigger_schedule(schedule_id="nightly-report")
    triggered = wait_until(lambda: _one(runs_of(alice, "nightly-report")))
    assert triggered.workflow_name == "nightly" and triggered.user_id == "alice"

    updated = schedules.update_schedule(
        schedule_id="nightly-report", schedule={"cron_expressions": ["30 4 * * 1"]}
    )
    assert updated.schedule_id == "nightly-report"
    after = schedules.get_schedule(schedule_id="nightly-report")
    assert after.cron_expressions == ["30 4 * * 1"]
    assert after.input == {"report": "sales"}  # fields not sent are kept

    schedules.unschedule_workflow(schedule_id="nightly-report")
    assert status_of(lambda: schedules.get_schedule(schedule_id="nightly-report")) == 404


def _one(rows: list[Any]) -> Any:
    assert len(rows) == 1, rows
    return rows[0]


def test_an_interval_schedule_of_one_second_starts_runs_visible_in_list_runs(
    alice: Mistral,
) -> None:
    alice.workflows.schedules.schedule_workflow(
        workflow_identifier="ticker",
        schedule_id="every-second",
        schedule={"input": {}, "intervals": [{"every": "1s"}], "policy": {"overlap": 6}},
    )

    def three_runs() -> list[Any]:
        rows = runs_of(alice, "every-second")
        assert len(rows) >= 3, rows
        return rows

    rows = wait_until(three_runs, timeout=30, interval=0.2)
    alice.workflows.schedules.unschedule_workflow(schedule_id="every-second")
    assert all(r.execution_id.startswith("every-second-") for r in rows)
    assert len({r.execution_id for r in rows}) == len(rows)
    recent = sorted(r.start_time for r in rows)
    assert recent[-1] > recent[0]


def test_another_users_schedule_is_not_found(alice: Mistral, bob: Mistral) -> None:
    alice.workflows.schedules.schedule_workflow(
        workflow_identifier="private",
        schedule_id="alices",
        schedule={"input": {}, "cron_expressions": ["0 0 1 1 *"]},
    )
    theirs = bob.workflows.schedules
    assert status_of(lambda: theirs.get_schedule(schedule_id="alices")) == 404
    assert status_of(lambda: theirs.pause_schedule(schedule_id="alices")) == 404
    assert status_of(lambda: theirs.resume_schedule(schedule_id="alices")) == 404
    assert status_of(lambda: theirs.trigger_schedule(schedule_id="alices")) == 404
    assert (
        status_of(
            lambda: theirs.update_schedule(schedule_id="alices", schedule={"input": {"x": 1}})
        )
        == 404
    )
    assert status_of(lambda: theirs.unschedule_workflow(schedule_id="alices")) == 404
    assert "alices" not in {s.schedule_id for s in theirs.get_schedules().result.schedules}
    assert alice.workflows.schedules.get_schedule(schedule_id="alices").paused is False


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ({"input": {}}, "at least one cron expression or interval"),
        ({"input": {}, "cron_expressions": ["61 * * * *"]}, "invalid cron expression"),
        ({"input": {}, "intervals": [{"every": "soon"}]}, "not a duration"),
        ({"input": {}, "cron_expressions": ["* * * * *"], "time_zone_name": "Mars/Base"}, "zone"),
        ({"input": {}, "cron_expressions": ["* * * * *"], "policy": {"overlap": 5}}, "overlap"),
        ({"input": {}, "calendars": [{"hour": [{"start": 3}]}]}, "calendar"),
    ],
)
def test_invalid_schedules_are_refused_with_the_reason(
    alice: Mistral, schedule: dict[str, Any], fragment: str
) -> None:
    from mistralai.client.errors import HTTPValidationError

    with pytest.raises(HTTPValidationError) as caught:
        alice.workflows.schedules.schedule_workflow(workflow_identifier="wf", schedule=schedule)
    assert fragment in caught.value.raw_response.text


def _state(stack: Stack, schedule_id: str) -> dict[str, Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(stack.env["RUNSTORE_MONGO_URL"])
    try:
        found = client[stack.env["RUNSTORE_MONGO_DATABASE"]].schedule_state.find_one(
            {"_id": schedule_id}
        )
        assert found is not None, "no state yet"
        return found
    finally:
        client.close()


@pytest.mark.parametrize(("overlap", "name"), [(1, "skip"), (2, "buffer")])
def test_overlap_policy_holds_times_while_the_previous_run_is_open(
    stack: Stack, alice: Mistral, overlap: int, name: str
) -> None:
    schedule_id = f"overlap-{name}"
    alice.workflows.schedules.schedule_workflow(
        workflow_identifier="slow",
        schedule_id=schedule_id,
        schedule={"input": {}, "intervals": [{"every": "1s"}], "policy": {"overlap": overlap}},
    )
    first = wait_until(lambda: _one(runs_of(alice, schedule_id)), timeout=30)

    def three_more_times_evaluated() -> dict[str, Any]:
        state = _state(stack, schedule_id)
        first_ns = int(state["recent"][0]["scheduled_at"].timestamp() * 1e9)
        assert state["last_scheduled_ns"] >= first_ns + 3_000_000_000, state
        return state

    state = wait_until(three_more_times_evaluated, timeout=30, interval=0.2)
    assert state["fired_count"] == 1  # the first run is still open: later times held back
    assert len(runs_of(alice, schedule_id)) == 1
    buffered = state.get("buffered_ns")
    assert (buffered is not None) == (overlap == 2)

    asyncio.run(
        produce(
            stack.env["RUNSTORE_KAFKA_BOOTSTRAP"],
            f"{stack.env['RUNSTORE_TOPIC_PREFIX']}workflows.commands",
            [
                (
                    first.execution_id,
                    command(
                        "CompleteExecution", first.execution_id, run_id=first.run_id, result=None
                    ),
                )
            ],
        )
    )

    def a_second_run() -> list[Any]:
        rows = runs_of(alice, schedule_id)
        assert len(rows) >= 2, rows
        return rows

    rows = wait_until(a_second_run, timeout=30, interval=0.2)
    alice.workflows.schedules.unschedule_workflow(schedule_id=schedule_id)
    if overlap == 2:
        # The buffered time is the one started once the first run closed.
        stamps = {r.execution_id.removeprefix(f"{schedule_id}-") for r in rows}
        at = datetime.fromtimestamp(buffered / 1e9, UTC) if buffered else None
        assert at is not None and at.strftime("%Y%m%dT%H%M%S.%fZ") in stamps
