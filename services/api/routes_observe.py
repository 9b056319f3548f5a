"""Looking at executions: their log records and traces, the events list, workflow
metrics, and `workers/whoami` (docs/catalogue.md). Every route naming an execution
checks, in separate access mode, that it is the caller's (`Authorized` for a path id; the
narrowed reader for `events/list`'s query ids)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from schemas.events import Event
from services.api import errors
from services.api.access import execution_query, existing_execution
from services.api.deps import Authorized, CallerReader, Catalogue, Settings
from services.api.http_docs import declared, json_body, opaque_cursor, read_opaque_cursor
from services.api.public_events import NAMESPACE, public_event
from services.api.request_json import StrictJsonRoute
from services.api.responses import EVERY_ROUTE
from services.api.responses import declared as declared_everywhere
from services.api.routes_runs import utc
from services.api.shapes import execution_from_run
from services.api.traces import DATA_SOURCE, otel_trace, span_tree, trace_event
from services.api.workflow_names import RESERVED_WORKFLOW_NAMES
from services.common.readmodels.run_filter import RunFilter

# Every route can answer these (auth, request limits and deadlines, failure budget).
router = APIRouter(
    route_class=StrictJsonRoute, tags=["observe"], responses=declared_everywhere(*EVERY_ROUTE)
)

Document = dict[str, Any]
METRICS_MAX_RUNS = 100_000
TREE_MAX_RUNS = 10_000
METRICS_BUCKETS = 24


# --- events list ----------------------------------------------------------------------


@router.get("/v1/workflows/events/list", responses=declared(200, 400, 401, 404, 422, 503))
async def get_workflow_events(
    who: Authorized,
    reader: CallerReader,
    catalogue: Catalogue,
    root_workflow_exec_id: Annotated[str | None, execution_query()] = None,
    workflow_exec_id: Annotated[str | None, execution_query()] = None,
    workflow_run_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> Response:
    """Stored events in the public shape, execution by execution (a root's tree in start
    order), each in stream order. One of the three filters is required: an unfiltered
    list would read every stream. Every id given must be the caller's (404), also one
    that another filter overrides."""
    run_execution = None
    if workflow_run_id:
        run_execution = await reader.commits.locate_run(workflow_run_id)
        if run_execution is None:
            raise HTTPException(status_code=404, detail=f"run {workflow_run_id!r} not found")
        await existing_execution(reader, run_execution)
    if workflow_exec_id:
        await existing_execution(reader, workflow_exec_id)
        executions = [workflow_exec_id]
    elif run_execution is not None:
        executions = [run_execution]
    elif root_workflow_exec_id:
        await existing_execution(reader, root_workflow_exec_id)
        executions = await reader.execution_tree(root_workflow_exec_id, TREE_MAX_RUNS)
    else:
        raise errors.invalid(
            ["query", "workflow_exec_id"],
            "give workflow_exec_id, workflow_run_id or root_workflow_exec_id",
            "missing",
        )
    start = _read_events_cursor(cursor)
    out: list[Document] = []
    more = False
    last: tuple[str, int, int] = ("", 0, 0)
    started = start is None
    for execution_id in executions:
        after_seq = 0
        if not started:
            if execution_id != start[0]:  # type: ignore[index]
                continue
            started = True
            after_seq = start[1] - 1  # type: ignore[index]
        for commit in await reader.commits.read_after(execution_id, after_seq):
            for event in commit.events:
                if start is not None and (execution_id, event.seq, event.index) <= start:
                    continue
                if workflow_run_id and event.run_id != workflow_run_id:
                    continue
                shaped = public_event(event)
                if shaped is None:
                    continue
                if len(out) == limit:
                    more = True
                    break
                out.append(shaped)
                last = (execution_id, event.seq, event.index)
            if more:
                break
        if more:
            break
    next_cursor = _events_cursor(last) if more else None
    return json_body({"events": out, "next_cursor": next_cursor})


def _events_cursor(position: tuple[str, int, int]) -> str:
    return opaque_cursor(list(position))


def _read_events_cursor(cursor: str | None) -> tuple[str, int, int] | None:
    if not cursor:
        return None
    execution_id, seq, index = read_opaque_cursor(cursor, 3)
    try:
        return (str(execution_id), int(seq), int(index))
    except (TypeError, ValueError) as exc:
        raise HTTPException(status_code=400, detail="cursor is not one this API issued") from exc


# --- whoami ---------------------------------------------------------------------------


@router.get("/v1/workflows/workers/whoami", responses=declared(200, 401))
async def whoami(who: Authorized, settings: Settings) -> Response:
    """What the SDK's payload-encoding set-up asks: the caller's namespace, and where
    the scheduler is (Runstore's commands topic on its Kafka)."""
    return json_body(
        {
            "namespace": NAMESPACE,
            "scheduler_url": f"kafka://{settings.kafka_bootstrap}/{settings.topics.commands}",
            "user_id": who.user_id,
        }
    )


# --- traces ---------------------------------------------------------------------------


async def _run_and_events(reader: CallerReader, execution_id: str) -> tuple[Document, list[Event]]:
    run = await existing_execution(reader, execution_id)
    events = [
        e
        for c in await reader.commits.read_after(execution_id, 0)
        for e in c.events
        if e.run_id == run["run_id"]
    ]
    return run, events


def _execution_fields(run: Document) -> Document:
    return execution_from_run(run, include_search_keys=True).model_dump(mode="json")


@router.get("/v1/workflows/executions/{execution_id}/trace/info", responses=declared(200, 401, 404))
async def get_workflow_execution_trace_info(
    who: Authorized, reader: CallerReader, execution_id: str
) -> Response:
    """No tracing backend: the trace is built from the history (the other trace routes)."""
    await existing_execution(reader, execution_id)
    return json_body({"otel_trace_id": None, "has_trace_data": False})


@router.get("/v1/workflows/executions/{execution_id}/trace/otel", responses=declared(200, 401, 404))
async def get_workflow_execution_trace_otel(
    who: Authorized, reader: CallerReader, execution_id: str
) -> Response:
    run, events = await _run_and_events(reader, execution_id)
    root = span_tree(run, events)
    trace = otel_trace(root)
    trace_id = trace["batches"][0]["scopeSpans"][0]["spans"][0]["traceId"]
    return json_body(
        {
            **_execution_fields(run),
            "data_source": DATA_SOURCE,
            "otel_trace_id": trace_id,
            "otel_trace_data": trace,
        }
    )


@router.get(
    "/v1/workflows/executions/{execution_id}/trace/summary", responses=declared(200, 401, 404)
)
async def get_workflow_execution_trace_summary(
    who: Authorized, reader: CallerReader, execution_id: str
) -> Response:
    run, events = await _run_and_events(reader, execution_id)
    return json_body({**_execution_fields(run), "span_tree": span_tree(run, events).summary()})


@router.get(
    "/v1/workflows/executions/{execution_id}/trace/events",
    responses=declared(200, 401, 404, 422),
)
async def get_workflow_execution_trace_events(
    who: Authorized,
    reader: CallerReader,
    catalogue: Catalogue,
    execution_id: str,
    merge_same_id_events: bool = False,
    include_internal_events: bool = False,
) -> Response:
    """The run's events as trace events; `merge_same_id_events` keeps the last event of
    each activity / custom task (its latest state)."""
    run, events = await _run_and_events(reader, execution_id)
    shaped = [trace_event(e) for e in events]
    if not include_internal_events:
        shaped = [s for s in shaped if not s["internal"]]
    if merge_same_id_events:
        merged: dict[str, Document] = {}
        for s in shaped:
            attrs = s["attributes"]
            key = str(attrs.get("task_id") or attrs.get("custom_task_id") or s["id"])
            merged.pop(key, None)
            merged[key] = s
        shaped = list(merged.values())
    return json_body({**_execution_fields(run), "events": shaped})


# --- metrics --------------------------------------------------------------------------


@router.get("/v1/workflows/{workflow_name}/metrics", responses=declared(200, 401, 404, 422, 503))
async def get_workflow_metrics(
    who: Authorized,
    reader: CallerReader,
    workflow_name: str,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
) -> Response:
    """Runs of the workflow started in [start_time, end_time] (default: the last 24 h):
    counts, mean and percentiles of the closed runs' durations, and the mean duration
    per hour-sized bucket (`latency_over_time`: `[[bucket_start_unix_s, mean_ms], …]`)."""
    if workflow_name in RESERVED_WORKFLOW_NAMES:
        raise HTTPException(status_code=404, detail=f"{workflow_name!r} is not a workflow")
    end = utc(end_time) or datetime.now(UTC)
    start = utc(start_time) or end - timedelta(days=1)
    if start > end:
        raise errors.invalid(["query", "start_time"], "after end_time")
    flt = RunFilter(workflow_name=workflow_name, start_time_after=start, start_time_before=end)
    runs = await reader.rows(flt, METRICS_MAX_RUNS)
    return json_body(workflow_metrics(runs, start, end))


def workflow_metrics(runs: list[Document], start: datetime, end: datetime) -> Document:
    """The SDK's `WorkflowMetrics` of these runs (extra keys: counts by status and
    duration percentiles, which the SDK model ignores)."""
    by_status: dict[str, int] = {}
    for r in runs:
        by_status[str(r.get("status"))] = by_status.get(str(r.get("status")), 0) + 1
    durations = sorted(
        int(r["total_duration_ms"]) for r in runs if r.get("total_duration_ms") is not None
    )
    retried = sum(1 for r in runs if int(r.get("attempt") or 1) > 1)
    span = max((end - start).total_seconds(), 1.0)
    width = span / METRICS_BUCKETS
    buckets: dict[int, list[int]] = {}
    for r in runs:
        if r.get("total_duration_ms") is None:
            continue
        began = r["start_time"] if r["start_time"].tzinfo else r["start_time"].replace(tzinfo=UTC)
        n = min(int((began - start).total_seconds() // width), METRICS_BUCKETS - 1)
        buckets.setdefault(n, []).append(int(r["total_duration_ms"]))
    over_time = [
        [int(start.timestamp() + n * width), sum(v) / len(v)] for n, v in sorted(buckets.items())
    ]
    return {
        "execution_count": {"value": len(runs)},
        "success_count": {"value": by_status.get("COMPLETED", 0)},
        "error_count": {
            "value": sum(by_status.get(s, 0) for s in ("FAILED", "TIMED_OUT", "TERMINATED"))
        },
        "average_latency_ms": {"value": sum(durations) / len(durations) if durations else 0},
        "latency_over_time": {"value": over_time},
        "retry_rate": {"value": retried / len(runs) if runs else 0},
        "count_by_status": by_status,
        "latency_percentiles_ms": {f"p{p}": _percentile(durations, p) for p in (50, 90, 95, 99)},
    }


def _percentile(values: list[int], p: int) -> int | None:
    """Nearest-rank percentile of sorted values; None for none."""
    if not values:
        return None
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]
