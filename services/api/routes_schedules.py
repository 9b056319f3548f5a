"""Schedules: the SDK's eight `workflows.schedules` methods (docs/api-gateway.md, "Schedules").

The API stores and edits schedule documents; the timers service evaluates them and starts
their runs. Trigger-now is the one start the API sends itself.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.admission import refusal
from schemas.schedules import (
    DEFAULT_CATCHUP_WINDOW_SECONDS,
    SUPPORTED_OVERLAP,
    Interval,
    OverlapPolicy,
    StoredSchedule,
    parse_duration,
    schedule_execution_id,
    schedule_start,
    upcoming,
)
from services.api import errors
from services.api.auth import Caller
from services.api.deps import Identified, Wired
from services.api.request_json import StrictJsonRoute
from services.api.responses import ERROR_JSON, EVERY_ROUTE, INVALID_JSON, declared
from services.api.routes_commands import apply_command, workflow_name_from_path
from services.common.clock import utcnow
from services.common.ids import new_id
from services.common.schedule_store import MongoScheduleStore

# Every route can answer these (auth, request limits and deadlines, failure budget).
router = APIRouter(route_class=StrictJsonRoute, responses=declared(*EVERY_ROUTE))

_FUTURE_SHOWN = 5
_NOT_FOUND: dict[str, Any] = {
    "description": "No such schedule (or another user's, in separate mode)",
    "content": ERROR_JSON,
}
_INVALID: dict[str, Any] = {
    "description": "Invalid request (FastAPI's validation error shape)",
    "content": INVALID_JSON,
}
_JSON: dict[str, Any] = ERROR_JSON
_UNAUTHORIZED: dict[str, Any] = {"description": "Missing or unknown API key", "content": _JSON}


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


# --- helpers ---------------------------------------------------------------------------


def _store(api: Wired) -> MongoScheduleStore:
    return MongoScheduleStore(api.db)


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


def _duration(loc: list[str | int], text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise errors.invalid(loc, str(exc)) from exc


def _apply_fields(base: dict[str, Any], fields: ScheduleFields, loc: str) -> dict[str, Any]:
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
                every_seconds=_duration(["body", loc, "intervals", i, "every"], iv.every),
                offset_seconds=(
                    _duration(["body", loc, "intervals", i, "offset"], iv.offset)
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
            _duration(["body", loc, "jitter"], fields.jitter) if fields.jitter else 0.0
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


def _validated(fields: dict[str, Any], loc: str) -> StoredSchedule:
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
    # Its runs must pass the admission rule, or the engine would dead-letter every firing.
    at = schedule.created_at
    start = schedule_start(schedule, schedule_execution_id(schedule.schedule_id, at), "check", at)
    if (refused := refusal(start)) is not None:
        raise errors.refused(refused)
    return schedule


async def _owned(api: Wired, who: Caller, schedule_id: str) -> StoredSchedule:
    """The schedule, if the caller may see it (in separate mode: its own); 404 otherwise."""
    schedule = await _store(api).get(schedule_id)
    if schedule is None or (api.access.separate and schedule.user_id != who.user_id):
        raise errors.not_found("schedule", schedule_id)
    return schedule


def _timing_changed(before: StoredSchedule, after: StoredSchedule) -> bool:
    fields = ("cron_expressions", "intervals", "start_at", "time_zone_name", "jitter_seconds")
    return any(getattr(before, f) != getattr(after, f) for f in fields)


async def _render(api: Wired, schedule: StoredSchedule) -> ScheduleOut:
    state = await _store(api).state(schedule.schedule_id) or {}
    fired = int(state.get("fired_count", 0))
    now = utcnow()
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
                every=_seconds_text(i.every_seconds),
                offset=_seconds_text(i.offset_seconds) if i.offset_seconds else None,
            )
            for i in schedule.intervals
        ],
        cron_expressions=list(schedule.cron_expressions),
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        jitter=_seconds_text(schedule.jitter_seconds) if schedule.jitter_seconds else None,
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


def _json(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


ScheduleId = Annotated[str, Path(min_length=1, max_length=256)]


# --- routes ----------------------------------------------------------------------------


@router.get(
    "/v1/workflows/schedules",
    response_model=ScheduleListOut,
    responses={401: _UNAUTHORIZED, 422: _INVALID},
)
async def get_schedules(
    who: Identified,
    api: Wired,
    workflow_name: str | None = None,
    user_id: str | None = None,
    status: Annotated[str | None, Query(pattern="^(active|paused)$")] = None,
    search: str | None = None,
    page_size: Annotated[int | None, Query(ge=1, le=1000)] = None,
    next_page_token: str | None = None,
) -> Response:
    """Schedules sorted by id, filtered; pages are keyset-based on the id (a scan of the
    schedules, which are few: not a hot path)."""
    wanted_user = who.user_id if user_id == "current" else user_id
    after = ""
    if next_page_token:
        try:
            after = base64.urlsafe_b64decode(next_page_token.encode()).decode()
        except ValueError as exc:
            raise errors.invalid(["query", "next_page_token"], "not a page token") from exc
    found = []
    for schedule in sorted(await _store(api).all_schedules(), key=lambda s: s.schedule_id):
        if schedule.schedule_id <= after:
            continue
        if api.access.separate and schedule.user_id != who.user_id:
            continue
        if workflow_name is not None and schedule.workflow_name != workflow_name:
            continue
        if wanted_user is not None and schedule.user_id != wanted_user:
            continue
        if status is not None and schedule.paused != (status == "paused"):
            continue
        if search and not schedule.workflow_name.startswith(search):
            continue
        found.append(schedule)
    page = found if page_size is None else found[:page_size]
    token = None
    if page_size is not None and len(found) > page_size:
        token = base64.urlsafe_b64encode(page[-1].schedule_id.encode()).decode()
    rendered = [await _render(api, s) for s in page]
    return _json(ScheduleListOut(schedules=rendered, next_page_token=token))


@router.post(
    "/v1/workflows/schedules",
    status_code=201,
    response_model=ScheduleIdOut,
    responses={
        401: _UNAUTHORIZED,
        409: {"description": "The schedule id is taken", "content": _JSON},
        422: _INVALID,
    },
)
async def schedule_workflow(who: Identified, api: Wired, body: ScheduleRequest) -> Response:
    identifier = (
        body.workflow_identifier or body.workflow_registration_id or body.workflow_version_id
    )
    if not identifier:
        raise errors.invalid(["body", "workflow_identifier"], "name the workflow to schedule")
    now = utcnow()
    base: dict[str, Any] = {
        "schedule_id": body.schedule_id or body.schedule.schedule_id or new_id(),
        "workflow_name": workflow_name_from_path(identifier),
        "user_id": who.user_id,
        "deployment_name": body.deployment_name or body.workflow_task_queue,
        "catchup_window_seconds": DEFAULT_CATCHUP_WINDOW_SECONDS,
        "created_at": now,
        "active_since": now,
    }
    schedule = _validated(_apply_fields(base, body.schedule, "schedule"), "schedule")
    if not await _store(api).create(schedule):
        raise HTTPException(
            status_code=409, detail=f"schedule_exists: schedule {schedule.schedule_id!r} exists"
        )
    return _json(ScheduleIdOut(schedule_id=schedule.schedule_id), status_code=201)


@router.get(
    "/v1/workflows/schedules/{schedule_id}",
    response_model=ScheduleOut,
    responses={401: _UNAUTHORIZED, 404: _NOT_FOUND},
)
async def get_schedule(who: Identified, api: Wired, schedule_id: ScheduleId) -> Response:
    return _json(await _render(api, await _owned(api, who, schedule_id)))


@router.patch(
    "/v1/workflows/schedules/{schedule_id}",
    response_model=ScheduleIdOut,
    responses={401: _UNAUTHORIZED, 404: _NOT_FOUND, 422: _INVALID},
)
async def update_schedule(
    who: Identified, api: Wired, schedule_id: ScheduleId, body: ScheduleUpdateRequest
) -> Response:
    before = await _owned(api, who, schedule_id)
    fields = _apply_fields(before.model_dump(), body.schedule, "schedule")
    after = _validated(fields, "schedule")
    if _timing_changed(before, after):
        # A new timing starts now: times it would have had in the past are not fired.
        after = after.model_copy(update={"active_since": utcnow()})
    await _store(api).replace(after)
    return _json(ScheduleIdOut(schedule_id=schedule_id))


@router.delete(
    "/v1/workflows/schedules/{schedule_id}",
    status_code=204,
    response_class=Response,
    responses={401: _UNAUTHORIZED, 404: _NOT_FOUND},
)
async def unschedule_workflow(who: Identified, api: Wired, schedule_id: ScheduleId) -> Response:
    await _owned(api, who, schedule_id)
    await _store(api).delete(schedule_id)
    return Response(status_code=204)


async def _set_paused(
    who: Caller, api: Wired, schedule_id: str, paused: bool, body: NoteRequest | None
) -> Response:
    schedule = await _owned(api, who, schedule_id)
    update: dict[str, Any] = {"paused": paused, "note": body.note if body else None}
    if not paused and schedule.paused:
        update["active_since"] = utcnow()  # what fell due while paused is skipped
    await _store(api).replace(schedule.model_copy(update=update))
    return Response(status_code=204)


@router.post(
    "/v1/workflows/schedules/{schedule_id}/pause",
    status_code=204,
    response_class=Response,
    responses={401: _UNAUTHORIZED, 404: _NOT_FOUND},
)
async def pause_schedule(
    who: Identified, api: Wired, schedule_id: ScheduleId, body: NoteRequest | None = None
) -> Response:
    return await _set_paused(who, api, schedule_id, True, body)


@router.post(
    "/v1/workflows/schedules/{schedule_id}/resume",
    status_code=204,
    response_class=Response,
    responses={401: _UNAUTHORIZED, 404: _NOT_FOUND},
)
async def resume_schedule(
    who: Identified, api: Wired, schedule_id: ScheduleId, body: NoteRequest | None = None
) -> Response:
    return await _set_paused(who, api, schedule_id, False, body)


@router.post(
    "/v1/workflows/schedules/{schedule_id}/trigger",
    status_code=204,
    response_class=Response,
    responses={
        401: _UNAUTHORIZED,
        404: _NOT_FOUND,
        503: {"description": "The start could not be published", "content": _JSON},
        504: {"description": "The engine did not answer in time", "content": _JSON},
    },
)
async def trigger_schedule(
    who: Identified,
    api: Wired,
    schedule_id: ScheduleId,
    body: TriggerRequest | None = None,
) -> Response:
    """Start a run of the schedule now (whatever its overlap policy and pause state); it
    carries the schedule's search key like every scheduled run."""
    schedule = await _owned(api, who, schedule_id)
    now = utcnow()
    command = schedule_start(
        schedule,
        schedule_execution_id(schedule_id, now),
        f"schedule-trigger:{new_id()}",
        now,
    )
    await apply_command(api.gateway, command)
    return Response(status_code=204)
