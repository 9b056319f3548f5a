"""What the OpenAPI document says each route can answer, declared in one place.

Every route can answer 401 (no or unknown key), 408 (request not read in time,
services/api/http_deadlines.py), 413 (body over the limit, or a command too large),
422 (FastAPI's validation shape; FastAPI declares it) and 429 (the client's failure
budget ran out, services/api/limits.py); each route adds what its own code raises.
`tests/sdk/test_openapi.py` walks the document, and schemathesis checks in `make test`
that no answer is undeclared.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel


class ErrorBody(BaseModel):
    """Every error but a 422: `<code>: <message>` or a plain message."""

    detail: str


WHY = {
    200: "OK",
    202: "Accepted",
    204: "No content",
    400: "Malformed request (a page token or cursor of another list or secret, an invalid "
    "reset point)",
    401: "Missing or unknown API key",
    404: "No such execution, run, workflow or schedule (or, in separate-users mode, another "
    "user's)",
    408: "The request was not read in time",
    409: "Conflicts with the current state (or the id is another user's)",
    413: "The body, or the command it makes, is too large",
    422: "Invalid request",
    429: "Too many failed requests from this client; see Retry-After",
    501: "Not implemented by Runstore (see docs/api-gateway.md)",
    503: "The command could not be published (it was not applied), or a run list did not "
    "finish within its time budget (`list_busy`, `list_timeout`; see Retry-After)",
    504: "The engine did not answer in time (the command may still be applied)",
}
"""What each status code means, for every route's OpenAPI `responses` (here and in
http_docs.py)."""

EVERY_ROUTE = (401, 408, 413, 429)


def declared(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these status codes."""
    return {code: {"model": ErrorBody, "description": WHY[code]} for code in codes}


# The content of an error answer, spelled out (for `responses=` entries written by hand):
# `{"detail": str}`, or FastAPI's validation shape for a 422.
ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
INVALID_JSON = {
    "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
}


def declared_json(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`declared` for a route whose own answers are not JSON (FastAPI would give its
    errors the route's media type): the schema spelled out under `application/json`."""
    return {code: {"description": WHY[code], "content": ERROR_JSON} for code in codes}


class EventStreamResponse(StreamingResponse):
    """A Server-Sent Events stream (so the OpenAPI document says `text/event-stream`)."""

    media_type = "text/event-stream"


def event_stream(*event_names: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a Server-Sent Events route: `text/event-stream`, each event (keep-alive
    comments are not events) an `id`, one of `event_names` and a `data` line of JSON.
    The route also needs `response_class=EventStreamResponse`, or FastAPI adds an
    `application/json` 200 the route never answers."""
    return {
        200: {
            "description": "Server-Sent Events: `id`, `event`, `data` frames, keep-alive comments",
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "event": {"type": "string", "enum": list(event_names)},
                            "data": {"type": "string"},
                        },
                        "required": ["data"],
                    }
                }
            },
        }
    }


# The workflow events streams: `data` is the JSON of the SDK's StreamEventSsePayload, or
# of an error that ended the stream.
EVENT_STREAM = event_stream("event", "error")
