"""The one place that maps domain rejections and gateway failures to HTTP answers."""

from __future__ import annotations

from fastapi import HTTPException

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


def not_found(what: str, ident: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} {ident!r} not found")
