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

from fastapi import APIRouter, Header, HTTPException, Path, Response
from pydantic import TypeAdapter, ValidationError

from schemas import admission
from schemas.commands import (
    COMMAND_ADAPTER,
    CancelExecution,
    Command,
    ReasonPayload,
    ResetExecution,
    ResetPayload,
    SignalExecution,
    SignalPayload,
    StartWorkflow,
    StartWorkflowPayload,
    TerminateExecution,
)
from schemas.common import TERMINAL_STATUSES, ExecutionStatus, Identifier
from schemas.outcomes import CommandOutcome
from services.api import errors
from services.api.access import known_execution_id
from services.api.auth import Caller
from services.api.catalogue import admit
from services.api.command_shapes import (
    BatchItemResult,
    BatchRequest,
    BatchResponse,
    InvocationRequest,
    ResetRequest,
    SignalAccepted,
)
from services.api.deps import Authed, Wired, Wiring
from services.api.event_fanout import (
    EventFanout,
    FanoutFailed,
    SubscriberOverflow,
    Subscription,
)
from services.api.gateway import CommandGateway, OutcomeTimeout, PublishFailed
from services.api.request_json import StrictJsonRoute
from services.api.responses import EVERY_ROUTE, declared
from services.api.run_reader import RunReader
from services.api.shapes import ExecuteExtensions, ExecuteRequest, Execution, execution_from_run
from services.common.clock import utcnow
from services.common.ids import derived_id, new_id

router = APIRouter(route_class=StrictJsonRoute, responses=declared(*EVERY_ROUTE))

Document = dict[str, Any]

# Path segments that name collections under /v1/workflows, never a workflow.
RESERVED_WORKFLOW_NAMES = frozenset(
    {
        "runs",
        "executions",
        "events",
        "registrations",
        "schedules",
        "deployments",
        "workers",
        "archive",
        "unarchive",
    }
)
_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
_WAIT_RECHECK_SECONDS = 2.0
_BATCH_CONCURRENCY = 100

IdempotencyKey = Annotated[str | None, Header(max_length=255)]
ExecutionId = Annotated[str, Path()]


# --- execute --------------------------------------------------------------------------


@router.post(
    "/v1/workflows/{workflow_identifier}/execute",
    response_model=Execution,
    responses=declared(404, 409, 503, 504),
)
async def execute(
    who: Authed,
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


async def start_execution(
    who: Caller,
    api: Wiring,
    body: ExecuteRequest,
    workflow_identifier: str,
    idempotency_key: str | None,
) -> bytes:
    """Start (or, with `wait_for_result`, run to its end) an execution; the JSON body of
    the 200 answer. HTTPException for every other answer."""
    workflow_name = workflow_name_from_path(workflow_identifier)
    # The catalogue decides whether HTTP may start this name, and gives the run its tags.
    tags = await admit(api.db, workflow_name, api.settings.api_allow_unregistered)
    if body.execution_id:
        execution_id = body.execution_id
    elif idempotency_key:
        # A retry must name the same execution, or its command would land elsewhere.
        execution_id = derived_id("execution", who.user_id, idempotency_key)
    else:
        execution_id = new_id()
    if api.access.separate and body.execution_id:
        existing = await api.all_runs.execution(execution_id)
        if existing is not None and not api.access.may_see(who, existing):
            raise HTTPException(
                status_code=409,
                detail=f"execution_id_taken: execution id {execution_id!r} belongs to another user",
            )
    try:
        options = ExecuteExtensions.model_validate(body.extensions or {})
    except ValidationError as exc:
        # FastAPI's 422 shape, as the SDK parses every 422 (HTTPValidationError).
        raise HTTPException(
            status_code=422,
            detail=[
                {"loc": ["body", "extensions", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ],
        ) from exc
    command = StartWorkflow(
        **_envelope("execute", who, execution_id, idempotency_key),
        payload=StartWorkflowPayload(
            workflow_name=workflow_name,
            input=body.input if body.encoded_input is None else body.encoded_input,
            deployment_name=body.deployment_name or body.task_queue,
            execution_timeout_seconds=options.execution_timeout_seconds,
            retry_policy=options.retry_policy,
            workflow_tags=tags or None,
        ),
    )
    reader = api.reader_for(who)
    if not body.wait_for_result:
        outcome = await apply_command(api.gateway, command)
        started = _started_execution(command, outcome)
        run = None if started is not None else await reader.execution(execution_id)
    else:
        limit = min(
            body.timeout_seconds or api.settings.api_wait_default_seconds,
            api.settings.api_wait_max_seconds,
        )
        # Subscribe before the command goes out: the end cannot slip past unseen.
        sub = api.fanout.subscribe(execution_id=execution_id)
        try:
            await apply_command(api.gateway, command)
            run = await _wait_until_closed(reader, api.fanout, sub, execution_id, limit)
        finally:
            api.fanout.unsubscribe(sub)
        started = None
    if started is None:
        if run is None:  # the engine stored it; only a lost store gets here
            raise HTTPException(status_code=503, detail="execution accepted but not readable")
        started = execution_from_run(run)
    # Serialized here: FastAPI would validate the model again on the way out.
    return started.model_dump_json().encode()


async def _wait_until_closed(
    reader: RunReader,
    fanout: EventFanout,
    sub: Subscription,
    execution_id: str,
    limit: float,
) -> Document | None:
    """The execution once its status is terminal, or as it is when `limit` passes.

    Woken by the execution's live events; re-reads now and then as well, so a stalled
    live feed only slows the answer down."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        run = await reader.execution(execution_id)
        left = deadline - loop.time()
        if run is None or _is_terminal(run) or left <= 0:
            return run
        try:
            await sub.next(min(left, _WAIT_RECHECK_SECONDS))  # any event of it: look again
        except SubscriberOverflow:
            fanout.unsubscribe(sub)
            sub = fanout.subscribe(execution_id=execution_id)
        except FanoutFailed:
            await asyncio.sleep(min(left, _WAIT_RECHECK_SECONDS))


def _started_execution(command: StartWorkflow, outcome: CommandOutcome) -> Execution | None:
    """The execution as the engine's outcome of its start describes it.

    The outcome carries the run id, the status and the decision time (which is the STARTED
    event's time); the command carries the rest. Answering from it saves the reads of a
    fresh execution. A retried request gets the first answer, as idempotency keys promise.
    """
    if outcome.run_id is None or outcome.status is None:
        return None
    p = command.payload
    at = outcome.decided_at
    return Execution(
        workflow_name=p.workflow_name,
        execution_id=command.execution_id,
        root_execution_id=p.root_execution_id or p.parent_execution_id or command.execution_id,
        status=outcome.status.value,
        # Read models keep milliseconds (BSON dates): answer the same start_time as a read.
        start_time=at.replace(microsecond=at.microsecond // 1000 * 1000),
        end_time=None,
        workflow_id=p.workflow_name,
        deployment_name=p.deployment_name,
        parent_execution_id=p.parent_execution_id,
        run_id=outcome.run_id,
        user_id=command.user_id,
        result=None,
    )


def _is_terminal(run: Document) -> bool:
    status = run.get("status")
    return status is not None and ExecutionStatus(status) in TERMINAL_STATUSES


# --- commands on one execution ----------------------------------------------------------


@router.post("/v1/workflows/executions/cancel", response_model=BatchResponse)
async def batch_cancel(
    who: Authed, api: Wired, body: BatchRequest, idempotency_key: IdempotencyKey = None
) -> BatchResponse:
    return await _batch(who, api, body, idempotency_key, _cancel_command)


@router.post("/v1/workflows/executions/terminate", response_model=BatchResponse)
async def batch_terminate(
    who: Authed, api: Wired, body: BatchRequest, idempotency_key: IdempotencyKey = None
) -> BatchResponse:
    return await _batch(who, api, body, idempotency_key, _terminate_command)


@router.post(
    "/v1/workflows/executions/{execution_id}/cancel",
    status_code=204,
    responses=declared(404, 409, 503, 504),
)
async def cancel(
    who: Authed, api: Wired, execution_id: ExecutionId, idempotency_key: IdempotencyKey = None
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
    who: Authed, api: Wired, execution_id: ExecutionId, idempotency_key: IdempotencyKey = None
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
    who: Authed,
    api: Wired,
    execution_id: ExecutionId,
    body: InvocationRequest,
    idempotency_key: IdempotencyKey = None,
) -> SignalAccepted:
    execution_id = known_execution_id(execution_id)
    command = SignalExecution(
        **_envelope("signal", who, execution_id, idempotency_key),
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
    who: Authed,
    api: Wired,
    execution_id: ExecutionId,
    body: ResetRequest,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    execution_id = known_execution_id(execution_id)
    command = ResetExecution(
        **_envelope("reset", who, execution_id, idempotency_key),
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


async def apply_command(gateway: CommandGateway, command: Command) -> CommandOutcome:
    """The accepted outcome of `command`, or the HTTP error that says what happened.

    The admission rule (schemas/admission.py) is applied first, as the engine applies it:
    a command it would dead-let is refused here (413 too large, 422 otherwise), instead
    of being published and answered 504 when no outcome comes."""
    encoded = COMMAND_ADAPTER.dump_json(command)
    refused = admission.encoded_refusal(command, encoded)
    if refused is not None:
        raise errors.refused(refused)
    try:
        outcome = await gateway.send(command, encoded=encoded)
    except OutcomeTimeout as exc:
        raise errors.gateway_timeout(str(exc)) from exc
    except PublishFailed as exc:
        raise errors.not_published(str(exc)) from exc
    if not outcome.accepted:
        raise errors.rejection_error(outcome)
    return outcome


def _envelope(kind: str, who: Caller, execution_id: str, key: str | None) -> dict[str, Any]:
    """The fields every command the API sends shares; with an idempotency key the command
    id is derived from it, so a retried request sends the same command."""
    return {
        "command_id": derived_id(kind, who.user_id, execution_id, key) if key else new_id(),
        "execution_id": execution_id,
        "issued_at": utcnow(),
        "user_id": who.user_id,
    }


def _cancel_command(who: Caller, execution_id: str, key: str | None) -> Command:
    return CancelExecution(
        **_envelope("cancel", who, execution_id, key),
        payload=ReasonPayload(),
    )


def _terminate_command(who: Caller, execution_id: str, key: str | None) -> Command:
    return TerminateExecution(
        **_envelope("terminate", who, execution_id, key),
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

    results = await asyncio.gather(*(one(e) for e in ids))
    return BatchResponse(results=dict(zip(ids, results, strict=True)))


def workflow_name_from_path(identifier: str) -> str:
    """A workflow name taken from a URL path, refused (422) if it could not be one."""
    try:
        name = _IDENTIFIER.validate_python(identifier)
    except ValidationError as exc:
        raise HTTPException(
            status_code=422,
            detail=[
                {"loc": ["path", "workflow_identifier"], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ],
        ) from exc
    if name in RESERVED_WORKFLOW_NAMES:
        raise errors.invalid(["path", "workflow_identifier"], f"{name!r} is a reserved name")
    return name
