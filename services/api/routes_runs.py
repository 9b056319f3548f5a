"""Read endpoints: the run list, runs, executions and their histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from services.api.deps import Authed, Reader
from services.api.errors import not_found
from services.api.run_list import BadPageToken, RunFilter
from services.api.shapes import (
    MAX_PAGE_SIZE,
    Execution,
    ExecutionList,
    execution_from_run,
    history_body,
    list_item_from_run,
)

router = APIRouter()


@router.get("/v1/workflows/runs", response_model=ExecutionList)
async def list_runs(
    who: Authed,
    reader: Reader,
    workflow_identifier: str | None = None,
    root_execution_id: str | None = None,
    search: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
    deployment_name: str | None = None,
    sort_by: Literal["start_time", "end_time"] = "start_time",
    order: Literal["asc", "desc"] = "desc",
    start_time_after: datetime | None = None,
    start_time_before: datetime | None = None,
    end_time_after: datetime | None = None,
    end_time_before: datetime | None = None,
    user_id: str | None = None,
    include_internal: bool = True,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    next_page_token: str | None = None,
) -> ExecutionList:
    # Workflows have no id apart from their name here, so `workflow_identifier` (name or
    # id) is the name. `search_key` and `workflow_tags` are not supported yet: FastAPI
    # ignores them, which lists more rather than fewer runs.
    flt = RunFilter(
        workflow_name=workflow_identifier or None,
        root_execution_id=root_execution_id or None,
        search=search or None,
        statuses=tuple(sorted(set(status or ()))),
        deployment_name=deployment_name or None,
        user_id=who.user_id if user_id == "current" else (user_id or None),
        include_internal=include_internal,
        # Stored times have millisecond precision (BSON dates): round the inclusive bounds
        # inwards so that a sub-millisecond bound keeps its meaning.
        start_time_after=ceil_ms(utc(start_time_after)),
        start_time_before=floor_ms(utc(start_time_before)),
        end_time_after=ceil_ms(utc(end_time_after)),
        end_time_before=floor_ms(utc(end_time_before)),
        sort_by=sort_by,
        order=order,
    )
    try:
        rows, token = await reader.list_runs(flt, page_size, next_page_token or None)
    except BadPageToken as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    return ExecutionList(executions=[list_item_from_run(r) for r in rows], next_page_token=token)


@router.get("/v1/workflows/runs/{run_id}", response_model=Execution)
async def get_run(who: Authed, reader: Reader, run_id: str) -> Execution:
    run = await reader.run(run_id)
    if run is None:
        raise not_found("run", run_id)
    return execution_from_run(run)


@router.get("/v1/workflows/runs/{run_id}/history")
async def get_run_history(
    who: Authed, reader: Reader, run_id: str, decode_payloads: bool = True
) -> JSONResponse:
    # Payloads are stored as the JSON the caller sent (client-encoded ones stay as the
    # client encoded them), so `decode_payloads` changes nothing.
    found = await reader.run_history(run_id)
    if found is None:
        raise not_found("run", run_id)
    return JSONResponse(history_body(*found))


@router.get("/v1/workflows/executions/{execution_id}", response_model=Execution)
async def get_execution(
    who: Authed, reader: Reader, execution_id: str, include_search_keys: bool = False
) -> Execution:
    run = await reader.execution(execution_id)
    if run is None:
        raise not_found("execution", execution_id)
    return execution_from_run(run, include_search_keys=include_search_keys)


@router.get("/v1/workflows/executions/{execution_id}/history")
async def get_execution_history(
    who: Authed, reader: Reader, execution_id: str, decode_payloads: bool = True
) -> JSONResponse:
    """The history of the execution's latest run (each run has its own history)."""
    found = await reader.execution_history(execution_id)
    if found is None:
        raise not_found("execution", execution_id)
    return JSONResponse(history_body(*found))


def floor_ms(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(microsecond=value.microsecond // 1000 * 1000)


def ceil_ms(value: datetime | None) -> datetime | None:
    floored = floor_ms(value)
    if value is None or floored is None or floored == value:
        return value
    return floored + timedelta(milliseconds=1)


def utc(value: datetime | None) -> datetime | None:
    """Naive datetimes are UTC (the SDK sends naive ones without a zone)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
