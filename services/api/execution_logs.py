"""Log records the workers shipped (services/common/worker_registry.py), read back per
execution (by `_id`: chunk 0, 1, … until one is missing) or per deployment (a list query
in shipping order), as the SDK's `ExecutionLogRecord` / `DeploymentLogRecord`.

A record's position is `"{chunk}.{index}"` for an execution, and
`"{shipped_at_ms}.{chunk_id}.{index}"` for a deployment; positions are the cursors and
the SSE ids. Order is shipping order: one worker's records keep their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from fastapi import HTTPException
from fastapi.responses import StreamingResponse

from services.api.sse import KEEPALIVE, SSE_HEADERS, frame, guarded
from services.common.catalogue_store import CatalogueStore

Document = dict[str, Any]

DEPLOYMENT_CHUNKS_PER_READ = 200


@dataclass(frozen=True, slots=True)
class Located:
    position: tuple[Any, ...]
    record: Document
    """As stored: `timestamp`, `severity`, `body`, `attributes`, ids."""


def public_record(located: Located, chunk: Document) -> Document:
    rec = located.record
    attributes = {str(k): str(v) for k, v in (rec.get("attributes") or {}).items()}
    for key in ("run_id", "activity_id", "workflow_name"):
        if rec.get(key):
            attributes[key] = str(rec[key])
    attributes["execution_id"] = str(chunk.get("execution_id", ""))
    attributes["worker_name"] = str(chunk.get("worker_id", ""))
    return {
        "timestamp": rec["timestamp"],
        "trace_id": rec.get("trace_id") or "",
        "span_id": rec.get("span_id") or "",
        "severity_text": rec.get("severity") or "INFO",
        "body": rec.get("body") or "",
        "log_attributes": attributes,
    }


def position_text(position: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in position)


def parse_execution_position(text: str) -> tuple[int, int]:
    try:
        chunk, index = text.split(".")
        return int(chunk), int(index)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"{text!r} is not a log cursor") from exc


@dataclass(frozen=True, slots=True)
class LogFilter:
    run_id: str | None = None
    activity_id: str | None = None
    workflow_name: str | None = None
    worker_name: str | None = None
    after: datetime | None = None
    before: datetime | None = None

    def keep(self, record: Document, chunk: Document) -> bool:
        if self.run_id and record.get("run_id") != self.run_id:
            return False
        if self.activity_id and record.get("activity_id") != self.activity_id:
            return False
        if self.workflow_name and record.get("workflow_name") != self.workflow_name:
            return False
        if self.worker_name and chunk.get("worker_id") != self.worker_name:
            return False
        when = _ts(record["timestamp"])
        if self.after and when < self.after:
            return False
        return not (self.before and when > self.before)


def _ts(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def execution_records(
    chunks: list[Document], flt: LogFilter
) -> list[tuple[tuple[int, int], Document]]:
    out: list[tuple[tuple[int, int], Document]] = []
    for chunk in chunks:
        for index, record in enumerate(chunk.get("records") or ()):
            if flt.keep(record, chunk):
                out.append(
                    ((int(chunk["chunk"]), index), public_record(Located((), record), chunk))
                )
    return out


def page(
    rows: list[tuple[tuple[Any, ...], Document]],
    order: str,
    cursor: tuple[Any, ...] | None,
    limit: int,
) -> tuple[list[Document], str | None]:
    """A page in position order (asc or desc) after `cursor`; the cursor of the next page
    when there are more rows."""
    rows = sorted(rows, key=lambda r: r[0], reverse=order == "desc")
    if cursor is not None:
        rows = [r for r in rows if (r[0] > cursor if order == "asc" else r[0] < cursor)]
    shown = rows[:limit]
    next_cursor = position_text(shown[-1][0]) if len(rows) > limit else None
    return [r[1] for r in shown], next_cursor


async def deployment_records(
    catalogue: CatalogueStore,
    deployment: str,
    flt: LogFilter,
    after_position: tuple[int, str, int] | None,
    wanted: int,
) -> list[tuple[tuple[int, str, int], Document]]:
    """Up to `wanted` records of the deployment's workers after `after_position`, in
    shipping order."""
    shipped_from = None
    if after_position is not None:
        shipped_from = datetime.fromtimestamp(after_position[0] / 1000, UTC)
    out: list[tuple[tuple[int, str, int], Document]] = []
    chunks = await catalogue.deployment_log_chunks(
        deployment, shipped_from, DEPLOYMENT_CHUNKS_PER_READ
    )
    for chunk in chunks:
        shipped = chunk["shipped_at"]
        shipped = shipped if shipped.tzinfo else shipped.replace(tzinfo=UTC)
        ms = int(shipped.timestamp() * 1000)
        for index, record in enumerate(chunk.get("records") or ()):
            pos = (ms, str(chunk["_id"]), index)
            if after_position is not None and pos <= after_position:
                continue
            if flt.keep(record, chunk):
                out.append((pos, public_record(Located(pos, record), chunk)))
        if len(out) >= wanted:
            break
    return out


def parse_deployment_position(text: str) -> tuple[int, str, int]:
    try:
        ms, rest = text.split(".", 1)
        chunk_id, index = rest.rsplit(".", 1)
        return int(ms), chunk_id, int(index)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"{text!r} is not a log cursor") from exc


def log_frame(position: str, record: Document) -> bytes:
    return frame(record, event_id=position, event="log")


LOG_POLL_SECONDS = 0.5

Fetch = Callable[[], Awaitable[list[tuple[str, Document]]]]
P = TypeVar("P")


def tail_stream(
    records_after: Callable[[P | None], Awaitable[list[tuple[P, Document]]]],
    start: P | None,
    finished: Callable[[], Awaitable[bool]],
    keepalive_seconds: float,
) -> StreamingResponse:
    """The SSE answer of a log tail: `records_after(last position sent)` polled every
    LOG_POLL_SECONDS from `start` (None: from the first record), until `finished()` and a
    last poll finds nothing."""
    last = start

    async def fetch() -> list[tuple[str, Document]]:
        nonlocal last
        rows = await records_after(last)
        if rows:
            last = rows[-1][0]
        return [(position_text(cast("tuple[Any, ...]", p)), rec) for p, rec in rows]

    frames = poll_frames(fetch, keepalive_seconds, LOG_POLL_SECONDS, finished)
    guarded_frames = guarded(frames, lambda: "log stream")
    return StreamingResponse(guarded_frames, media_type="text/event-stream", headers=SSE_HEADERS)


async def poll_frames(
    fetch: Fetch,
    keepalive_seconds: float,
    poll_seconds: float,
    finished: Callable[[], Awaitable[bool]],
) -> AsyncIterator[bytes]:
    """SSE frames from repeated `fetch()` calls (each returns `[(position_text, record)]`
    newer than the last); a `: keep-alive` comment after each silent `keepalive_seconds`;
    ends once `finished()` is true and a last fetch found nothing."""
    silent = 0.0
    while True:
        rows = await fetch()
        for position, record in rows:
            yield log_frame(position, record)
        if rows:
            silent = 0.0
            continue
        if await finished():
            return
        await asyncio.sleep(poll_seconds)
        silent += poll_seconds
        if silent >= keepalive_seconds:
            silent = 0.0
            yield KEEPALIVE
