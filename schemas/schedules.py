"""Schedules: what is stored for each, and the pure rules of when it fires.

The HTTP API (services/api/routes_schedules.py) writes `StoredSchedule` documents; the
timers service evaluates them (services/timers/schedule_runner.py) and starts each firing
with a StartWorkflow whose command id derives from the schedule id and the scheduled time.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import AwareDatetime, Field, JsonValue, field_validator

from schemas.commands import StartWorkflow, StartWorkflowPayload
from schemas.common import FrozenModel, Identifier

SCHEDULE_SEARCH_KEY = "schedule_id"
"""The search key every run a schedule starts carries: `list_runs(search_key="schedule_id==:X")`."""

DEFAULT_CATCHUP_WINDOW_SECONDS = 365 * 24 * 3600  # the SDK's default (one year)


class OverlapPolicy(IntEnum):
    """The SDK's `ScheduleOverlapPolicy` numbers (Temporal's). Runstore supports SKIP,
    BUFFER_ONE and ALLOW_ALL; the others are refused at creation."""

    SKIP = 1
    BUFFER_ONE = 2
    BUFFER_ALL = 3
    CANCEL_OTHER = 4
    TERMINATE_OTHER = 5
    ALLOW_ALL = 6


SUPPORTED_OVERLAP = frozenset(
    {OverlapPolicy.SKIP, OverlapPolicy.BUFFER_ONE, OverlapPolicy.ALLOW_ALL}
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`: `"90"`, `"1.5s"`, `"500ms"`, `"5m"`, `"2h"`, `"1d"` or ISO 8601
    (`"PT1M30S"`). ValueError otherwise."""
    plain = _DURATION.match(text)
    if plain:
        return float(plain.group(1)) * _UNIT_SECONDS[plain.group(2)]
    iso = _ISO_DURATION.match(text.strip().upper())
    if iso and any(iso.groupdict().values()):
        parts = {k: float(v) if v else 0.0 for k, v in iso.groupdict().items()}
        return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    raise ValueError(f"not a duration: {text!r} (e.g. '30s', '5m', '1h', 'PT1M')")


class Interval(FrozenModel):
    every_seconds: float = Field(gt=0)
    offset_seconds: float = Field(default=0.0, ge=0)


class StoredSchedule(FrozenModel):
    """One schedule as the API stores it (`schedules`, `_id` = schedule_id)."""

    schedule_id: Identifier
    workflow_name: Identifier
    user_id: str | None = None
    deployment_name: str | None = None
    input: JsonValue = None
    cron_expressions: tuple[str, ...] = ()
    intervals: tuple[Interval, ...] = ()
    start_at: AwareDatetime | None = None
    end_at: AwareDatetime | None = None
    jitter_seconds: float = Field(default=0.0, ge=0)
    time_zone_name: str | None = None
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    catchup_window_seconds: float = Field(default=DEFAULT_CATCHUP_WINDOW_SECONDS, ge=0)
    pause_on_failure: bool = False
    max_executions: int | None = Field(default=None, ge=0)
    paused: bool = False
    note: str | None = None
    created_at: AwareDatetime
    active_since: AwareDatetime
    """Scheduled times at or before this are never fired: set at creation, at resume and
    at each update of the timing, so a pause or a change does not fire what it skipped."""

    @field_validator("time_zone_name")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("cron_expressions")
    @classmethod
    def _valid_crons(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for expr in value:
            try:
                CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
            except CronSimError as exc:
                raise ValueError(f"invalid cron expression {expr!r}: {exc}") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone_name or "UTC")


def _next_cron(expr: str, after: datetime, zone: ZoneInfo) -> datetime:
    # cronsim walks wall-clock time in the datetime's zone (DST handled); it yields times
    # strictly after its start.
    return next(CronSim(expr, after.astimezone(zone))).astimezone(UTC)


def _next_interval(interval: Interval, after: datetime) -> datetime:
    # Times are epoch + offset + n * every (as Temporal's intervals): stable across restarts.
    after_s = after.timestamp()
    n = (after_s - interval.offset_seconds) // interval.every_seconds + 1
    at = interval.offset_seconds + n * interval.every_seconds
    if at <= after_s:  # float rounding
        at += interval.every_seconds
    return datetime.fromtimestamp(at, UTC)


def next_time(schedule: StoredSchedule, after: datetime) -> datetime | None:
    """The first scheduled time strictly after `after` within the bounds, or None."""
    floor = after
    if schedule.start_at is not None and schedule.start_at > floor:
        floor = schedule.start_at - timedelta(microseconds=1)
    zone = schedule.zone
    candidates = [_next_cron(e, floor, zone) for e in schedule.cron_expressions]
    candidates += [_next_interval(i, floor) for i in schedule.intervals]
    if not candidates:
        return None
    found = min(candidates)
    if schedule.end_at is not None and found > schedule.end_at:
        return None
    return found


def upcoming(schedule: StoredSchedule, after: datetime, count: int) -> list[datetime]:
    times: list[datetime] = []
    at: datetime | None = after
    while len(times) < count and at is not None:
        at = next_time(schedule, at)
        if at is not None:
            times.append(at)
    return times


def to_ns(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000_000 + at.microsecond * 1000


def jitter_ns(schedule_id: str, scheduled_ns: int, jitter_seconds: float) -> int:
    """A delay in [0, jitter) derived from the schedule and the time: the same on every
    instance and after a restart, so a firing never moves."""
    if jitter_seconds <= 0:
        return 0
    digest = hashlib.sha256(f"{schedule_id}:{scheduled_ns}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % int(jitter_seconds * 1e9)


def schedule_command_id(schedule_id: str, scheduled_ns: int) -> str:
    """Deterministic per firing: a firing sent twice starts one run."""
    plain = f"schedule:{schedule_id}:{scheduled_ns}"
    return plain if len(plain) <= 200 else "schedule:" + hashlib.sha256(plain.encode()).hexdigest()


def schedule_execution_id(schedule_id: str, scheduled_at: datetime) -> str:
    """`{schedule_id}-{UTC time, compact}`: readable, and one per scheduled time."""
    stamp = scheduled_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{schedule_id[:200]}-{stamp}"


def schedule_start(
    schedule: StoredSchedule, execution_id: str, command_id: str, issued_at: datetime
) -> StartWorkflow:
    """The StartWorkflow of one firing (or trigger): the run carries the schedule id as a
    search key and runs as the schedule's owner."""
    return StartWorkflow(
        command_id=command_id,
        execution_id=execution_id,
        issued_at=issued_at,
        user_id=schedule.user_id,
        payload=StartWorkflowPayload(
            workflow_name=schedule.workflow_name,
            input=schedule.input,
            deployment_name=schedule.deployment_name,
            search_keys={SCHEDULE_SEARCH_KEY: schedule.schedule_id},
        ),
    )
