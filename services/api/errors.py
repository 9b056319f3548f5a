"""The one place that maps domain rejections and gateway failures to HTTP answers.

| engine outcome / gateway failure | HTTP |
|---|---|
| `execution_not_found` | 404 |
| `execution_already_running`, `execution_already_closed`, | 409 |
| `execution_id_reuse_rejected`, `run_not_active`, `invalid_transition` | 409 |
| `invalid_reset_point` | 400 |
| no worker answered a query / update in time (worker_requests.py) | 504 `no_worker_reply` |
| the engine did not answer in time | 504 (the command may still apply) |
| the command could not be published | 503 (it was not applied) |
| the admission rule refuses the command: too large | 413 `too_large` |
| the admission rule refuses a value in it | 422 `payload_refused` (FastAPI's shape) |

Bodies are `{"detail": "<code>: <message>"}`; 422s keep FastAPI's `detail` list.
"""

from __future__ import annotations

from fastapi import HTTPException

from schemas.admission import TOO_LARGE, Refusal
from schemas.outcomes import CommandOutcome, RejectionCode

_STATUS = {
    RejectionCode.EXECUTION_NOT_FOUND: 404,
    RejectionCode.EXECUTION_ALREADY_RUNNING: 409,
    RejectionCode.EXECUTION_ALREADY_CLOSED: 409,
    RejectionCode.EXECUTION_ID_REUSE_REJECTED: 409,
    RejectionCode.RUN_NOT_ACTIVE: 409,
    RejectionCode.INVALID_RESET_POINT: 400,
    RejectionCode.INVALID_TRANSITION: 409,
}


def rejection_error(outcome: CommandOutcome) -> HTTPException:
    code = outcome.code or RejectionCode.INVALID_TRANSITION
    return HTTPException(
        status_code=_STATUS.get(code, 409),
        detail=f"{code.value}: {outcome.message or 'command rejected'}",
    )


def gateway_timeout(message: str) -> HTTPException:
    return HTTPException(status_code=504, detail=f"engine_timeout: {message}")


def not_published(message: str) -> HTTPException:
    return HTTPException(status_code=503, detail=f"not_published: {message}")


def not_found(what: str, ident: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} {ident!r} not found")


def invalid(loc: list[str | int], msg: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own (the SDK parses it as HTTPValidationError)."""
    return HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg, "type": kind}])


def refused(refusal: Refusal) -> HTTPException:
    """A command the admission rule refuses, as the engine would dead-letter it."""
    if refusal.code == TOO_LARGE:
        return HTTPException(status_code=413, detail=f"{TOO_LARGE}: {refusal.message}")
    loc: list[str | int] = ["body", *refusal.loc[1:]] if refusal.loc else ["body"]
    return invalid(loc, refusal.message, refusal.code)
