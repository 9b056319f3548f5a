"""The pure schedule rules (schemas/schedules.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.schedules import (
    Interval,
    StoredSchedule,
    jitter_ns,
    next_time,
    parse_duration,
    schedule_command_id,
    schedule_start,
    to_ns,
    upcoming,
)

T0 = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)


def schedule(**fields: object) -> StoredSchedule:
    return StoredSchedule.model_validate(
        {"schedule_id": "s", "workflow_name": "wf", "created_at": T0, "active_since": T0, **fields}
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("PT1M30S", 90),
        ("P1DT1H", 90000),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_cron_follows_the_time_zone_across_daylight_saving() -> None:
    paris = schedule(cron_expressions=("0 3 * * *",), time_zone_name="Europe/Paris")
    # Summer time starts in Paris on 2026-03-29 at 02:00: 03:00 on the 28th is 02:00 UTC,
    # on the 29th and after 01:00 UTC.
    times = upcoming(paris, datetime(2026, 3, 27, 12, 0, tzinfo=UTC), 3)
    assert [t.astimezone(UTC).hour for t in times] == [2, 1, 1]


def test_intervals_are_anchored_at_the_epoch_plus_offset() -> None:
    every = schedule(intervals=(Interval(every_seconds=60, offset_seconds=15),))
    assert next_time(every, T0) == datetime(2026, 3, 28, 12, 0, 15, tzinfo=UTC)
    assert next_time(every, datetime(2026, 3, 28, 12, 0, 15, tzinfo=UTC)) == datetime(
        2026, 3, 28, 12, 1, 15, tzinfo=UTC
    )


def test_start_and_end_bound_the_times() -> None:
    bounded = schedule(
        intervals=(Interval(every_seconds=3600),),
        start_at=datetime(2026, 3, 28, 15, 0, tzinfo=UTC),
        end_at=datetime(2026, 3, 28, 16, 30, tzinfo=UTC),
    )
    assert [t.hour for t in upcoming(bounded, T0, 5)] == [15, 16]


def test_jitter_is_deterministic_and_bounded() -> None:
    at = to_ns(T0)
    assert jitter_ns("s", at, 30) == jitter_ns("s", at, 30)
    assert 0 <= jitter_ns("s", at, 30) < 30_000_000_000
    assert jitter_ns("s", at, 0) == 0


def test_a_firing_starts_a_run_with_the_schedule_search_key_and_a_derived_command_id() -> None:
    s = schedule(cron_expressions=("* * * * *",), input={"a": 1}, user_id="alice")
    start = schedule_start(s, "s-1", schedule_command_id("s", to_ns(T0)), T0)
    assert start.command_id == f"schedule:s:{to_ns(T0)}"
    assert start.payload.search_keys == {"schedule_id": "s"}
    assert start.user_id == "alice" and start.payload.input == {"a": 1}


def test_unknown_zones_and_bad_crons_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        schedule(cron_expressions=("* * * * *",), time_zone_name="Mars/Base")
    with pytest.raises(ValidationError, match="invalid cron expression"):
        schedule(cron_expressions=("61 * * * *",))
