"""Command endpoints: each publishes a command to `workflows.commands` and answers with
the engine's outcome for it, so the HTTP status tells what happened (docs/api-gateway.md).

Idempotency: with an `Idempotency-Key` header the command id is derived from the caller,
the endpoint, the execution and the key, so a retried request carries the same command id
and the engine applies it once (a repeat is answered with the first outcome).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response

from schemas.commands import (
    CancelExecution,
    Command,
    ReasonPayload,
    ResetExecution,
    ResetPayload,
    SignalExecution,
    SignalPayload,
    TerminateExecution,
)
from services.api import errors
from services.api.access import known_execution_id
from services.api.auth import Caller
from services.api.command_sending import IdempotencyKey, apply_command, command_envelope
from services.api.command_shapes import (
    BatchItemResult,
    BatchRequest,
    BatchResponse,
    InvocationRequest,
    ResetRequest,
    SignalAccepted,
)
from services.api.deps import Authorized, Wired, Wiring
from services.api.request_json import StrictJsonRoute
from services.api.responses import EVERY_ROUTE, declared
from services.api.shapes import ExecuteRequest, Execution
from services.api.start_execution import start_execution

router = APIRouter(route_class=StrictJsonRoute, responses=declared(*EVERY_ROUTE))

Document = dict[str, Any]

_BATCH_CONCURRENCY = 100

ExecutionId = Annotated[str, Path()]


# --- execute --------------------------------------------------------------------------


@router.post(
    "/v1/workflows/{workflow_identifier}/execute",
    response_model=Execution,
    responses=declared(404, 409, 503, 504),
)
async def execute(
    who: Authorized,
    api: Wired,
    body: ExecuteRequest,
    workflow_identifier: Annotated[str, Path()],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    # The same request usually never gets here: services/api/execute_fast_path.py answers
    # it with `start_execution` in front of the router (this route is its fallback, and
    # the API's documented shape).
    answer = await start_execution(who, api, body, workflow_identifier, idempotency_key)
    return Response(answer, media_type="application/json")


# --- commands on one execution ----------------------------------------------------------


@router.post("/v1/workflows/executions/cancel", response_model=BatchResponse)
async def batch_cancel(
    who: Authorized, api: Wired, body: BatchRequest, idempotency_key: IdempotencyKey = None
) -> BatchResponse:
    return await _batch(who, api, body, idempotency_key, _cancel_command)


@router.post("/v1/workflows/executions/terminate", response_model=BatchResponse)
async def batch_terminate(
    who: Authorized, api: Wired, body: BatchRequest, idempotency_key: IdempotencyKey = None
) -> BatchResponse:
    return await _batch(who, api, body, idempotency_key, _terminate_command)


@router.post(
    "/v1/workflows/executions/{execution_id}/cancel",
    status_code=204,
    responses=declared(404, 409, 503, 504),
)
async def cancel(
    who: Authorized, api: Wired, execution_id: ExecutionId, idempotency_key: IdempotencyKey = None
) -> Response:
    await apply_command(
        api.gateway, _cancel_command(who, known_execution_id(execution_id), idempotency_key)
    )
    return Response(status_code=204)


@router.post(
    "/v1/workflows/executions/{execution_id}/terminate",
    status_code=204,
    responses=declared(404, 409, 503, 504),
)
async def terminate(
    who: Authorized, api: Wired, execution_id: ExecutionId, idempotency_key: IdempotencyKey = None
) -> Response:
    command = _terminate_command(who, known_execution_id(execution_id), idempotency_key)
    await apply_command(api.gateway, command)
    return Response(status_code=204)


@router.post(
    "/v1/workflows/executions/{execution_id}/signals",
    status_code=202,
    response_model=SignalAccepted,
    responses=declared(404, 409, 503, 504),
)
async def signal(
    who: Authorized,
    api: Wired,
    execution_id: ExecutionId,
    body: InvocationRequest,
    idempotency_key: IdempotencyKey = None,
) -> SignalAccepted:
    execution_id = known_execution_id(execution_id)
    command = SignalExecution(
        **command_envelope("signal", who, execution_id, idempotency_key),
        payload=SignalPayload(name=body.name, input=body.input),
    )
    await apply_command(api.gateway, command)
    return SignalAccepted()


@router.post(
    "/v1/workflows/executions/{execution_id}/reset",
    status_code=204,
    responses=declared(400, 404, 409, 503, 504),
)
async def reset(
    who: Authorized,
    api: Wired,
    execution_id: ExecutionId,
    body: ResetRequest,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    execution_id = known_execution_id(execution_id)
    command = ResetExecution(
        **command_envelope("reset", who, execution_id, idempotency_key),
        payload=ResetPayload(
            event_id=body.event_id,
            reason=body.reason,
            exclude_signals=bool(body.exclude_signals),
            exclude_updates=bool(body.exclude_updates),
        ),
    )
    await apply_command(api.gateway, command)
    return Response(status_code=204)


# --- helpers --------------------------------------------------------------------------


def _cancel_command(who: Caller, execution_id: str, key: str | None) -> Command:
    return CancelExecution(
        **command_envelope("cancel", who, execution_id, key),
        payload=ReasonPayload(),
    )


def _terminate_command(who: Caller, execution_id: str, key: str | None) -> Command:
    return TerminateExecution(
        **command_envelope("terminate", who, execution_id, key),
        payload=ReasonPayload(),
    )


async def _batch(
    who: Caller,
    api: Wiring,
    body: BatchRequest,
    key: str | None,
    make: Callable[[Caller, str, str | None], Command],
) -> BatchResponse:
    ids = list(dict.fromkeys(body.execution_ids))
    if len(ids) > api.settings.api_batch_max_ids:
        raise errors.invalid(
            ["body", "execution_ids"],
            f"at most {api.settings.api_batch_max_ids} execution ids per request",
            "too_long",
        )
    limiter = asyncio.Semaphore(_BATCH_CONCURRENCY)

    async def one(execution_id: str) -> BatchItemResult:
        async with limiter:
            try:
                valid = known_execution_id(execution_id)
                if api.access.separate and not api.access.may_see(
                    who, await api.all_runs.execution(valid)
                ):
                    raise errors.not_found("execution", execution_id)
                await apply_command(api.gateway, make(who, valid, key))
            except HTTPException as exc:
                return BatchItemResult(status="failure", error=str(exc.detail))
            return BatchItemResult(status="success", error=None)

    with api.gateway.holding():  # (the batch's commands share a window)
        results = await asyncio.gather(*(one(e) for e in ids))
    return BatchResponse(results=dict(zip(ids, results, strict=True)))
