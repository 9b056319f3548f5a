"""Log records the workers shipped, per execution and per deployment: a page
(`…/logs`) and a live tail (`…/logs/stream`, `event: log` frames whose id is the
record's position; `last_event_id` resumes after it). See execution_logs.py for where
the records live and how positions read, docs/catalogue.md for the contract."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from schemas.common import ExecutionStatus
from services.api.access import existing_execution
from services.api.deps import Authorized, CallerReader, Catalogue, Settings
from services.api.execution_logs import (
    Document,
    LogFilter,
    deployment_records,
    execution_records,
    page,
    parse_deployment_position,
    parse_execution_position,
    position_text,
    tail_stream,
)
from services.api.http_docs import declared, json_body
from services.api.responses import EVERY_ROUTE
from services.api.responses import declared as declared_everywhere
from services.api.routes_deployments import existing_deployment
from services.api.routes_runs import utc

# Every route can answer these (auth, request limits and deadlines, failure budget).
router = APIRouter(tags=["logs"], responses=declared_everywhere(*EVERY_ROUTE))

_DEPLOYMENT_RECORDS_PER_READ = 500
# Polls of a closed execution before its log stream ends: the worker ships its last
# records within a second of the run's end.
_CLOSED_POLLS = 3


@router.get(
    "/v1/workflows/executions/{execution_id}/logs", responses=declared(200, 400, 401, 404, 422)
)
async def get_workflow_execution_logs(
    who: Authorized,
    reader: CallerReader,
    catalogue: Catalogue,
    execution_id: str,
    run_id: str | None = None,
    activity_id: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    order: Literal["asc", "desc"] = "asc",
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Response:
    """The execution's log records in shipping order (or reversed)."""
    await existing_execution(reader, execution_id)
    flt = LogFilter(run_id=run_id, activity_id=activity_id, after=utc(after), before=utc(before))
    rows = execution_records(await catalogue.execution_log_chunks(execution_id), flt)
    position = parse_execution_position(cursor) if cursor else None
    records, next_cursor = page(list(rows), order, position, limit)
    return json_body({"results": records, "next_cursor": next_cursor})


@router.get(
    "/v1/workflows/executions/{execution_id}/logs/stream",
    responses=declared(200, 400, 401, 404, 422, stream=True),
)
async def stream_workflow_execution_logs(
    who: Authorized,
    reader: CallerReader,
    catalogue: Catalogue,
    settings: Settings,
    execution_id: str,
    run_id: str | None = None,
    activity_id: str | None = None,
    after: datetime | None = None,
    last_event_id: str | None = None,
) -> StreamingResponse:
    """Ends once the execution is closed and its records are sent (records shipped later
    than that are in `get_workflow_execution_logs`)."""
    await existing_execution(reader, execution_id)
    flt = LogFilter(
        run_id=run_id, activity_id=activity_id, after=None if last_event_id else utc(after)
    )

    async def records_after(last: tuple[int, int] | None) -> list[tuple[tuple[int, int], Document]]:
        chunks = await catalogue.execution_log_chunks(execution_id, max(last[0], 0) if last else 0)
        return [r for r in execution_records(chunks, flt) if last is None or r[0] > last]

    closed_polls = 0

    async def finished() -> bool:
        nonlocal closed_polls
        run = await reader.execution(execution_id)
        if run is None or not ExecutionStatus(run["status"]).is_open:
            closed_polls += 1
        return closed_polls >= _CLOSED_POLLS

    start = parse_execution_position(last_event_id) if last_event_id else None
    return tail_stream(records_after, start, finished, settings.api_sse_keepalive_seconds)


@router.get("/v1/workflows/deployments/{name}/logs", responses=declared(200, 400, 401, 404, 422))
async def get_deployment_logs(
    who: Authorized,
    catalogue: Catalogue,
    name: str,
    log_type: str | None = None,
    worker_name: str | None = None,
    workflow_name: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    order: Literal["asc", "desc"] = "asc",
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Response:
    """The log records the deployment's workers shipped, in shipping order. `order=desc`
    reverses one page of the oldest records after `cursor` (logs are read forwards)."""
    await existing_deployment(catalogue, name)
    flt = LogFilter(
        worker_name=worker_name, workflow_name=workflow_name, after=utc(after), before=utc(before)
    )
    position = parse_deployment_position(cursor) if cursor else None
    rows = await deployment_records(catalogue, name, flt, position, limit + 1)
    records, _ = page(list(rows), "asc", None, limit)
    next_cursor = position_text(rows[limit - 1][0]) if len(rows) > limit else None
    if order == "desc":
        records.reverse()
    return json_body({"results": records, "next_cursor": next_cursor})


@router.get(
    "/v1/workflows/deployments/{name}/logs/stream",
    responses=declared(200, 400, 401, 404, 422, stream=True),
)
async def stream_deployment_logs(
    who: Authorized,
    catalogue: Catalogue,
    settings: Settings,
    name: str,
    worker_name: str | None = None,
    workflow_name: str | None = None,
    after: datetime | None = None,
    last_event_id: str | None = None,
) -> StreamingResponse:
    """Runs until the client disconnects."""
    await existing_deployment(catalogue, name)
    flt = LogFilter(
        worker_name=worker_name,
        workflow_name=workflow_name,
        after=None if last_event_id else utc(after),
    )

    async def records_after(
        last: tuple[int, str, int] | None,
    ) -> list[tuple[tuple[int, str, int], Document]]:
        return await deployment_records(catalogue, name, flt, last, _DEPLOYMENT_RECORDS_PER_READ)

    async def never() -> bool:
        return False

    start = parse_deployment_position(last_event_id) if last_event_id else None
    return tail_stream(records_after, start, never, settings.api_sse_keepalive_seconds)
