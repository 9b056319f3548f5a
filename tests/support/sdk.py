"""Helpers for tests that use the official mistralai SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mistralai.client.errors import HTTPValidationError, SDKError


def status_of(call: Callable[[], Any]) -> int:
    """The HTTP status an SDK call answered with (200 when it returned)."""
    try:
        result = call()
        if hasattr(result, "close"):
            result.close()
    except SDKError as exc:
        return exc.status_code
    except HTTPValidationError as exc:
        return exc.raw_response.status_code
    return 200
