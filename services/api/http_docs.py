"""OpenAPI declarations of the routes that answer hand-built JSON (the catalogue,
deployments, logs, traces): each status code a route can answer and its content type."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response

from services.api.responses import WHY


def declared(*codes: int, stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: JSON bodies, or `text/event-stream` for the 200 of a
    stream; 204 has no body."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": WHY[code]}
        if code == 200 and stream:
            entry["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
        elif code != 204:
            entry["content"] = {"application/json": {"schema": {"type": "object"}}}
        out[code] = entry
    return out


def json_body(value: Any, status_code: int = 200) -> Response:
    """A JSON answer with datetimes in ISO-8601 UTC (`Z`)."""
    return Response(
        json.dumps(value, default=_default, separators=(",", ":")),
        status_code=status_code,
        media_type="application/json",
    )


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def opaque_cursor(key: list[Any]) -> str:
    """A list cursor: the last row's sort key as URL-safe base64 JSON."""
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def read_opaque_cursor(cursor: str, size: int) -> list[Any]:
    """The key of `opaque_cursor`, or 400 for anything else."""
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error) as exc:
        raise HTTPException(status_code=400, detail="cursor is not one this API issued") from exc
    if not isinstance(value, list) or len(value) != size:
        raise HTTPException(status_code=400, detail="cursor is not one this API issued")
    return value
