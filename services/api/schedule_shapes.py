"""Schedules over HTTP: the request bodies and answers of the SDK's `workflows.schedules`
methods, and how a request's fields become a `StoredSchedule` (422 on what Runstore does
not support)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.schedules import (
    SUPPORTED_OVERLAP,
    Interval,
    OverlapPolicy,
    StoredSchedule,
    parse_duration,
    upcoming,
)
from services.api import errors

_FUTURE_SHOWN = 5


# --- request bodies (as the SDK sends them; unknown fields ignored) ----------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class IntervalIn(_Request):
    every: str
    offset: str | None = None


class PolicyIn(_Request):
    catchup_window_seconds: int | None = Field(default=None, ge=0)
    overlap: int | None = None
    pause_on_failure: bool | None = None


class ScheduleFields(_Request):
    """`PartialScheduleDefinition`: every field optional; only those sent change."""

    input: Any = None
    calendars: list[dict[str, Any]] | None = None
    intervals: list[IntervalIn] | None = None
    cron_expressions: list[str] | None = None
    skip: list[dict[str, Any]] | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    jitter: str | None = None
    time_zone_name: str | None = None
    policy: PolicyIn | None = None
    max_executions: int | None = Field(default=None, ge=0)


class ScheduleDefinitionIn(ScheduleFields):
    schedule_id: str | None = None


class ScheduleRequest(_Request):
    """`WorkflowScheduleRequest`."""

    schedule: ScheduleDefinitionIn
    workflow_registration_id: str | None = None
    workflow_version_id: str | None = None
    workflow_identifier: str | None = None
    workflow_task_queue: str | None = None
    schedule_id: str | None = None
    deployment_name: str | None = None


class ScheduleUpdateRequest(_Request):
    schedule: ScheduleFields


class NoteRequest(_Request):
    note: str | None = Field(default=None, max_length=2000)


class TriggerRequest(_Request):
    overlap: int | None = None


# --- responses (the shapes the SDK parses) -----------------------------------------------


class ScheduleIdOut(BaseModel):
    schedule_id: str


class IntervalOut(BaseModel):
    every: str
    offset: str | None = None


class PolicyOut(BaseModel):
    catchup_window_seconds: int
    overlap: int
    pause_on_failure: bool


class FutureOut(BaseModel):
    scheduled_at: datetime


class RecentOut(BaseModel):
    scheduled_at: datetime
    started_at: datetime
    execution_id: str


class ScheduleOut(BaseModel):
    """`ScheduleDefinitionOutput`."""

    input: Any = None
    schedule_id: str
    workflow_name: str
    paused: bool
    calendars: list[dict[str, Any]] = []
    intervals: list[IntervalOut] = []
    cron_expressions: list[str] = []
    skip: list[dict[str, Any]] = []
    start_at: datetime | None = None
    end_at: datetime | None = None
    jitter: str | None = None
    time_zone_name: str | None = None
    policy: PolicyOut
    remaining_executions: int | None = None
    deployment_name: str | None = None
    note: str | None = None
    future_executions: list[FutureOut] = []
    recent_executions: list[RecentOut] = []


class ScheduleListOut(BaseModel):
    schedules: list[ScheduleOut]
    next_page_token: str | None = None


def seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


def duration(loc: list[str | int], text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise errors.invalid(loc, str(exc)) from exc


def apply_fields(base: dict[str, Any], fields: ScheduleFields, loc: str) -> dict[str, Any]:
    """`base` (StoredSchedule fields) with the fields the client sent; 422 on what Runstore
    does not support (calendars, skip, overlap policies other than 1, 2, 6)."""
    sent = fields.model_fields_set
    out = dict(base)
    if fields.calendars or fields.skip:
        raise errors.invalid(
            ["body", loc, "calendars" if fields.calendars else "skip"],
            "calendar specifications are not supported; use cron_expressions (with "
            "time_zone_name) or intervals",
        )
    if "input" in sent:
        out["input"] = fields.input
    if "cron_expressions" in sent:
        out["cron_expressions"] = tuple(fields.cron_expressions or ())
    if "intervals" in sent:
        out["intervals"] = tuple(
            Interval(
                every_seconds=duration(["body", loc, "intervals", i, "every"], iv.every),
                offset_seconds=(
                    duration(["body", loc, "intervals", i, "offset"], iv.offset)
                    if iv.offset
                    else 0.0
                ),
            )
            for i, iv in enumerate(fields.intervals or ())
        )
    for name in ("start_at", "end_at", "time_zone_name", "max_executions"):
        if name in sent:
            out[name] = getattr(fields, name)
    if "jitter" in sent:
        out["jitter_seconds"] = (
            duration(["body", loc, "jitter"], fields.jitter) if fields.jitter else 0.0
        )
    if fields.policy is not None:
        policy = fields.policy
        if policy.overlap is not None:
            try:
                overlap = OverlapPolicy(policy.overlap)
            except ValueError as exc:
                raise errors.invalid(
                    ["body", loc, "policy", "overlap"], "overlap must be 1..6"
                ) from exc
            if overlap not in SUPPORTED_OVERLAP:
                raise errors.invalid(
                    ["body", loc, "policy", "overlap"],
                    f"overlap {overlap.value} ({overlap.name}) is not supported; use 1 (SKIP), "
                    "2 (BUFFER_ONE) or 6 (ALLOW_ALL)",
                )
            out["overlap"] = overlap
        if policy.catchup_window_seconds is not None:
            out["catchup_window_seconds"] = policy.catchup_window_seconds
        if policy.pause_on_failure is not None:
            out["pause_on_failure"] = policy.pause_on_failure
    return out


def validated(fields: dict[str, Any], loc: str) -> StoredSchedule:
    try:
        schedule = StoredSchedule.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise errors.invalid(["body", loc, *first["loc"]], first["msg"]) from exc
    if not schedule.cron_expressions and not schedule.intervals:
        raise errors.invalid(
            ["body", loc], "a schedule needs at least one cron expression or interval"
        )
    if schedule.start_at and schedule.end_at and schedule.end_at <= schedule.start_at:
        raise errors.invalid(["body", loc, "end_at"], "end_at must be after start_at")
    return schedule


def timing_changed(before: StoredSchedule, after: StoredSchedule) -> bool:
    fields = ("cron_expressions", "intervals", "start_at", "time_zone_name", "jitter_seconds")
    return any(getattr(before, f) != getattr(after, f) for f in fields)


def schedule_out(schedule: StoredSchedule, state: dict[str, Any], now: datetime) -> ScheduleOut:
    """The SDK's `ScheduleDefinitionOutput` of a schedule, given its firing state (the
    timers service keeps it) and the time now (for the upcoming times)."""
    fired = int(state.get("fired_count", 0))
    future = (
        []
        if schedule.paused
        else upcoming(schedule, max(now, schedule.active_since), _FUTURE_SHOWN)
    )
    remaining = None
    if schedule.max_executions is not None:
        remaining = max(0, schedule.max_executions - fired)
        if remaining == 0:
            future = []
    return ScheduleOut(
        input=schedule.input,
        schedule_id=schedule.schedule_id,
        workflow_name=schedule.workflow_name,
        paused=schedule.paused,
        intervals=[
            IntervalOut(
                every=seconds_text(i.every_seconds),
                offset=seconds_text(i.offset_seconds) if i.offset_seconds else None,
            )
            for i in schedule.intervals
        ],
        cron_expressions=list(schedule.cron_expressions),
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        jitter=seconds_text(schedule.jitter_seconds) if schedule.jitter_seconds else None,
        time_zone_name=schedule.time_zone_name,
        policy=PolicyOut(
            catchup_window_seconds=int(schedule.catchup_window_seconds),
            overlap=schedule.overlap.value,
            pause_on_failure=schedule.pause_on_failure,
        ),
        remaining_executions=remaining,
        deployment_name=schedule.deployment_name,
        note=schedule.note,
        future_executions=[FutureOut(scheduled_at=t) for t in future],
        recent_executions=[RecentOut(**r) for r in reversed(state.get("recent", []))],
    )
