"""Schedules: the SDK's eight `workflows.schedules` methods (docs/api-gateway.md, "Schedules").

The API stores and edits schedule documents; the timers service evaluates them and starts
their runs. Trigger-now is the one start the API sends itself.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel

from schemas.schedules import (
    DEFAULT_CATCHUP_WINDOW_SECONDS,
    StoredSchedule,
    schedule_execution_id,
    schedule_start,
)
from services.api import errors
from services.api.auth import Caller
from services.api.command_sending import apply_command
from services.api.deps import Identified, Wired
from services.api.responses import EVERY_ROUTE, declared
from services.api.schedule_shapes import (
    NoteRequest,
    ScheduleIdOut,
    ScheduleListOut,
    ScheduleOut,
    ScheduleRequest,
    ScheduleUpdateRequest,
    TriggerRequest,
    apply_fields,
    schedule_out,
    timing_changed,
    validated,
)
from services.api.workflow_names import workflow_name_from_path
from services.common.clock import utcnow
from services.common.ids import new_id
from services.common.schedule_store import MongoScheduleStore

# Every route can answer these (auth, request limits and deadlines, failure budget).
router = APIRouter(responses=declared(*EVERY_ROUTE))

# A schedule id names no execution: another user's schedule answers 404 like an unknown
# one (`_owned`).
_NO_CONTENT: dict[str, Any] = {
    "status_code": 204,
    "response_class": Response,
    "responses": declared(404),
}


# --- helpers ---------------------------------------------------------------------------


def _store(api: Wired) -> MongoScheduleStore:
    return api.schedules


async def _owned(api: Wired, who: Caller, schedule_id: str) -> StoredSchedule:
    """The schedule, if the caller may see it (in separate mode: its own); 404 otherwise."""
    schedule = await _store(api).get(schedule_id)
    if schedule is None or (api.access.separate and schedule.user_id != who.user_id):
        raise errors.not_found("schedule", schedule_id)
    return schedule


async def _render(api: Wired, schedule: StoredSchedule) -> ScheduleOut:
    state = await _store(api).state(schedule.schedule_id) or {}
    return schedule_out(schedule, state, utcnow())


def _json(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


ScheduleId = Annotated[str, Path(min_length=1, max_length=256)]


# --- routes ----------------------------------------------------------------------------


@router.get(
    "/v1/workflows/schedules",
    response_model=ScheduleListOut,
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
    responses=declared(409),
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
    schedule = validated(apply_fields(base, body.schedule, "schedule"), "schedule")
    if not await _store(api).create(schedule):
        raise HTTPException(
            status_code=409, detail=f"schedule_exists: schedule {schedule.schedule_id!r} exists"
        )
    return _json(ScheduleIdOut(schedule_id=schedule.schedule_id), status_code=201)


@router.get(
    "/v1/workflows/schedules/{schedule_id}",
    response_model=ScheduleOut,
    responses=declared(404),
)
async def get_schedule(who: Identified, api: Wired, schedule_id: ScheduleId) -> Response:
    return _json(await _render(api, await _owned(api, who, schedule_id)))


@router.patch(
    "/v1/workflows/schedules/{schedule_id}",
    response_model=ScheduleIdOut,
    responses=declared(404),
)
async def update_schedule(
    who: Identified, api: Wired, schedule_id: ScheduleId, body: ScheduleUpdateRequest
) -> Response:
    before = await _owned(api, who, schedule_id)
    fields = apply_fields(before.model_dump(), body.schedule, "schedule")
    after = validated(fields, "schedule")
    if timing_changed(before, after):
        # A new timing starts now: times it would have had in the past are not fired.
        after = after.model_copy(update={"active_since": utcnow()})
    await _store(api).replace(after)
    return _json(ScheduleIdOut(schedule_id=schedule_id))


@router.delete(
    "/v1/workflows/schedules/{schedule_id}",
    **_NO_CONTENT,
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
    **_NO_CONTENT,
)
async def pause_schedule(
    who: Identified, api: Wired, schedule_id: ScheduleId, body: NoteRequest | None = None
) -> Response:
    return await _set_paused(who, api, schedule_id, True, body)


@router.post(
    "/v1/workflows/schedules/{schedule_id}/resume",
    **_NO_CONTENT,
)
async def resume_schedule(
    who: Identified, api: Wired, schedule_id: ScheduleId, body: NoteRequest | None = None
) -> Response:
    return await _set_paused(who, api, schedule_id, False, body)


@router.post(
    "/v1/workflows/schedules/{schedule_id}/trigger",
    status_code=204,
    response_class=Response,
    responses=declared(404, 503, 504),
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
