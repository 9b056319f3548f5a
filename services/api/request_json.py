"""Request bodies parsed as strictly as the engine parses commands.

FastAPI parses JSON bodies with `json.loads`, which accepts what the rest of Runstore
cannot take: a lone UTF-16 surrogate (`"\\ud800"`, which no UTF-8 encoder can write back,
so the answer was a 500), `NaN` and `Infinity`, and nesting deep enough to raise
`RecursionError` later. The routes use `StrictJsonRoute` instead, whose bodies are parsed
by pydantic's own parser (the one the engine uses) with those refused; a refusal is a
`json.JSONDecodeError`, which FastAPI answers 422 `json_invalid` with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic_core import from_json

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(body: bytes) -> Any:
    """The JSON value of `body`; `json.JSONDecodeError` (with the reason) if it is not
    JSON every part of Runstore can take."""
    try:
        return from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        reason = str(exc)
        if "hex escape" in reason and _SURROGATE_ESCAPE.search(body):
            reason = f"a lone UTF-16 surrogate (\\ud800-\\udfff unpaired) is not text: {reason}"
        raise json.JSONDecodeError(reason, body.decode("utf-8", "replace"), 0) from exc


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose JSON bodies are parsed by `parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
