"""Live streams (SSE): one execution's events, and the filtered events stream.

See services/api/sse.py for the frame format and how history joins live events, and
docs/streams.md for the contract (ids, resume, filters, what ends a stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request

from schemas.common import ExecutionStatus
from schemas.events import EventType
from services.api import errors
from services.api.access import execution_query, existing_execution, known_execution_id
from services.api.broker_stream import BrokerStream, decode_kafka_id
from services.api.deps import Access, Authorized, CallerReader, Fanout, Settings
from services.api.execution_stream import ExecutionStream
from services.api.public_events import BEFORE_ALL, Position, parse_position
from services.api.request_json import StrictJsonRoute
from services.api.responses import EVENT_STREAM, EVERY_ROUTE, EventStreamResponse, declared_json
from services.api.sse import SSE_HEADERS, EventFilter, guarded

router = APIRouter(route_class=StrictJsonRoute, responses=declared_json(*EVERY_ROUTE))

PUBLIC_EVENT_TYPES = frozenset(t.value for t in EventType if t.is_public)
_EVENTS_STREAM_PARAMS = frozenset(
    {
        "scope",
        "activity_name",
        "activity_id",
        "workflow_name",
        "workflow_exec_id",
        "root_workflow_exec_id",
        "parent_workflow_exec_id",
        "stream",
        "start_seq",
        "workflow_event_types",
        "last_event_id",
    }
)

LastEventIdHeader = Annotated[str | None, Header(alias="last-event-id", max_length=4096)]


@router.get(
    "/v1/workflows/executions/{execution_id}/stream",
    response_class=EventStreamResponse,
    responses={**EVENT_STREAM, **declared_json(404)},
)
async def execution_stream(
    who: Authorized,
    reader: CallerReader,
    fanout: Fanout,
    settings: Settings,
    execution_id: str,
    event_source: Literal["DATABASE", "LIVE", "HYBRID"] = "HYBRID",
    last_event_id: Annotated[str | None, Query(max_length=4096)] = None,
    last_event_id_header: LastEventIdHeader = None,
) -> EventStreamResponse:
    run = await existing_execution(reader, execution_id)
    after = _position(last_event_id or last_event_id_header, "last_event_id")
    stream = ExecutionStream(
        execution_id=execution_id,
        fanout=fanout,
        commits=reader.commits,
        keepalive_seconds=settings.api_sse_keepalive_seconds,
        after=after,
        history=event_source != "LIVE",
        live=event_source != "DATABASE",
        end_when_closed=True,
        closed_at_open=not ExecutionStatus(run["status"]).is_open,
    )
    return _sse(guarded(stream.frames(), lambda: f"stream of execution {execution_id}"))


@router.get(
    "/v1/workflows/events/stream",
    response_class=EventStreamResponse,
    responses={**EVENT_STREAM, **declared_json(404)},
)
async def events_stream(
    request: Request,
    who: Authorized,
    access: Access,
    fanout: Fanout,
    reader: CallerReader,
    settings: Settings,
    scope: Literal["activity", "workflow", "*"] = "*",
    activity_name: str = "*",
    activity_id: str = "*",
    workflow_name: str = "*",
    # Every parameter naming an execution is declared with `execution_query`: in separate
    # mode `Authorized` then checks that each names one of the caller's executions (404).
    workflow_exec_id: Annotated[str, execution_query()] = "*",
    root_workflow_exec_id: Annotated[str, execution_query()] = "*",
    parent_workflow_exec_id: Annotated[str, execution_query()] = "*",
    stream: Annotated[str, execution_query()] = "*",
    start_seq: Annotated[int, Query(ge=0)] = 0,
    workflow_event_types: Annotated[list[str] | None, Query()] = None,
    last_event_id: Annotated[str | None, Query(max_length=4096)] = None,
    last_event_id_header: LastEventIdHeader = None,
) -> EventStreamResponse:
    unknown = sorted(set(request.query_params) - _EVENTS_STREAM_PARAMS)
    if unknown:
        # The SDK sends metadata_filters as bare query keys; events carry no metadata.
        raise errors.invalid(
            ["query", unknown[0]],
            f"unknown filter {unknown[0]!r}: metadata filters are not supported",
        )
    bad_types = sorted(set(workflow_event_types or ()) - PUBLIC_EVENT_TYPES)
    if bad_types:
        raise errors.invalid(
            ["query", "workflow_event_types"], f"unknown event type {bad_types[0]!r}", "enum"
        )
    flt = EventFilter(
        scope=_given(scope),
        activity_name=_given(activity_name),
        activity_id=_given(activity_id),
        workflow_name=_given(workflow_name),
        workflow_exec_id=_given(workflow_exec_id),
        root_workflow_exec_id=_given(root_workflow_exec_id),
        parent_workflow_exec_id=_given(parent_workflow_exec_id),
        stream=_given(stream),
        event_types=frozenset(workflow_event_types) if workflow_event_types else None,
    )
    named = (
        flt.workflow_exec_id
        or flt.root_workflow_exec_id
        or flt.parent_workflow_exec_id
        or flt.stream
    )
    if access.separate and named is None:
        # (Each execution named was checked by `Authorized`: the caller's, or 404.)
        raise errors.invalid(
            ["query", "workflow_exec_id"],
            "name workflow_exec_id, root_workflow_exec_id, parent_workflow_exec_id or stream "
            "(users are separate: the events of all executions are not yours to read)",
            "missing",
        )
    resume = last_event_id_header or last_event_id
    single = flt.workflow_exec_id or flt.stream
    if (
        single is not None
        and flt.stream in (None, single)
        and flt.workflow_exec_id
        in (
            None,
            single,
        )
    ):
        known_execution_id(single)
        after = _position(resume, "last-event-id")
        if start_seq > 0:
            after = max(after, Position.from_sequence(start_seq - 1))
        session = ExecutionStream(
            execution_id=single,
            fanout=fanout,
            commits=reader.commits,
            keepalive_seconds=settings.api_sse_keepalive_seconds,
            after=after,
            end_when_closed=False,
            flt=flt,
        )
        return _sse(guarded(session.frames(), lambda: f"events stream of {single}"))
    if start_seq > 0:
        raise errors.invalid(
            ["query", "start_seq"],
            "start_seq counts events of one execution: give workflow_exec_id too, "
            "or resume with the last-event-id header",
        )
    positions = None
    if resume:
        try:
            positions = decode_kafka_id(resume)
        except ValueError as exc:
            raise errors.invalid(["header", "last-event-id"], str(exc)) from exc
        if positions is None:
            raise errors.invalid(
                ["header", "last-event-id"],
                "not an id of this stream (ids of filtered-by-execution streams "
                "resume only with workflow_exec_id)",
            )
    broker_stream = BrokerStream(
        fanout=fanout,
        settings=settings,
        keepalive_seconds=settings.api_sse_keepalive_seconds,
        flt=flt,
        resume_from=positions,
    )
    return _sse(guarded(broker_stream.frames(), lambda: "events stream"))


def _given(value: str) -> str | None:
    """The SDK sends `*` for every filter left out."""
    return None if value in ("*", "") else value


def _position(text: str | None, name: str) -> Position:
    if not text:
        return BEFORE_ALL
    try:
        return parse_position(text)
    except ValueError as exc:
        raise errors.invalid(["query", name], str(exc)) from exc


def _sse(frames: AsyncIterator[bytes]) -> EventStreamResponse:
    return EventStreamResponse(frames, headers=SSE_HEADERS)
