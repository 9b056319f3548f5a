"""Read endpoints: the run list, runs, executions and their histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel

from services.api.deps import CallerReader, Identified
from services.api.errors import invalid, not_found
from services.api.request_json import StrictJsonRoute
from services.api.responses import EVERY_ROUTE, declared
from services.api.run_reader import (
    MAX_HISTORY_PAGE,
    HistoryPage,
    history_token,
    read_history_token,
)
from services.api.shapes import (
    MAX_PAGE_SIZE,
    Execution,
    ExecutionList,
    execution_from_run,
    history_body,
    list_item_from_run,
)
from services.common.clock import to_milliseconds
from services.common.readmodels.run_filter import BadPageToken, RunFilter
from services.common.readmodels.search_keys import BadSearchKey, parse_search_keys

router = APIRouter(route_class=StrictJsonRoute, responses=declared(*EVERY_ROUTE))

_JSON = "application/json"


def _json(model: BaseModel) -> Response:
    # The model is already the response: serialise it once, in pydantic-core, instead of
    # letting FastAPI validate it again against the response model.
    return Response(model.model_dump_json(), media_type=_JSON)


@router.get("/v1/workflows/runs", response_model=ExecutionList, responses=declared(400, 503))
async def list_runs(
    who: Identified,
    reader: CallerReader,
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
    workflow_tags: Annotated[list[str] | None, Query()] = None,
    include_internal: bool = True,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    next_page_token: str | None = None,
    search_key: Annotated[list[str] | None, Query()] = None,
) -> Response:
    # Workflows have no id apart from their name here, so `workflow_identifier` (name or
    # id) is the name.
    try:
        search_keys = parse_search_keys(search_key or [])
    except BadSearchKey as exc:
        raise invalid(["query", "search_key"], str(exc)) from exc
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
        search_keys=search_keys,
        workflow_tags=tuple(sorted({t for t in workflow_tags or () if t})),
    )
    try:
        rows, token = await reader.list_runs(flt, page_size, next_page_token or None)
    except BadPageToken as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    return _json(
        ExecutionList(executions=[list_item_from_run(r) for r in rows], next_page_token=token)
    )


@router.get("/v1/workflows/runs/{run_id}", response_model=Execution, responses=declared(404))
async def get_run(who: Identified, reader: CallerReader, run_id: str) -> Response:
    run = await reader.run(run_id)
    if run is None:
        raise not_found("run", run_id)
    return _json(execution_from_run(run))


# History paging is an extension the SDK does not know (it sends neither parameter and
# gets the whole history): `page_size` events per page, and `next_page_token` from the
# previous page's body. Each page is one or two `_id` reads of history chunks.
HistoryPageSize = Annotated[
    int | None,
    Query(
        ge=1,
        le=MAX_HISTORY_PAGE,
        description="Events per page (extension; absent = the whole history)",
    ),
]
HistoryToken = Annotated[
    str | None, Query(description="`next_page_token` of the previous history page")
]


@router.get("/v1/workflows/runs/{run_id}/history", responses=declared(400, 404))
async def get_run_history(
    who: Identified,
    reader: CallerReader,
    run_id: str,
    decode_payloads: bool = True,
    page_size: HistoryPageSize = None,
    next_page_token: HistoryToken = None,
) -> Response:
    # Payloads are stored as the JSON the caller sent (client-encoded ones stay as the
    # client encoded them), so `decode_payloads` changes nothing.
    after = 0
    if next_page_token:
        token_run, after = _history_cursor(next_page_token)
        if token_run != run_id:
            raise HTTPException(
                status_code=400,
                detail=f"next_page_token belongs to the history of run {token_run!r}, "
                f"not of run {run_id!r}",
            )
    page = await reader.run_history_page(run_id, after, page_size)
    if page is None:
        raise not_found("run", run_id)
    return _history(page)


@router.get(
    "/v1/workflows/executions/{execution_id}", response_model=Execution, responses=declared(404)
)
async def get_execution(
    who: Identified, reader: CallerReader, execution_id: str, include_search_keys: bool = False
) -> Response:
    run = await reader.execution(execution_id)
    if run is None:
        raise not_found("execution", execution_id)
    return _json(execution_from_run(run, include_search_keys=include_search_keys))


@router.get("/v1/workflows/executions/{execution_id}/history", responses=declared(400, 404))
async def get_execution_history(
    who: Identified,
    reader: CallerReader,
    execution_id: str,
    decode_payloads: bool = True,
    page_size: HistoryPageSize = None,
    next_page_token: HistoryToken = None,
) -> Response:
    """The history of the execution's latest run (each run has its own history). Pages
    after the first stay on the run the first page showed, even if a reset or restart
    opens another run meanwhile."""
    if not next_page_token:
        page = await reader.execution_history_page(execution_id, 0, page_size)
        if page is None:
            raise not_found("execution", execution_id)
        return _history(page)
    token_run, after = _history_cursor(next_page_token)
    page = await reader.run_history_page(token_run, after, page_size)
    if page is None or page.run["execution_id"] != execution_id:
        raise HTTPException(
            status_code=400,
            detail=f"next_page_token does not belong to a history of execution "
            f"{execution_id!r}; pass the next_page_token of its previous history page",
        )
    return _history(page)


def _history_cursor(token: str) -> tuple[str, int]:
    try:
        return read_history_token(token)
    except BadPageToken as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


def _history(page: HistoryPage) -> Response:
    token = None if page.next_after is None else history_token(page.run["run_id"], page.next_after)
    return Response(history_body(page.run, page.lines, token), media_type=_JSON)


def floor_ms(value: datetime | None) -> datetime | None:
    return None if value is None else to_milliseconds(value)


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
