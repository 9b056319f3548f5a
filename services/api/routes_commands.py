"""Command endpoints: each publishes a command and answers with the engine's outcome."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path
from pydantic import TypeAdapter, ValidationError

from schemas.commands import StartWorkflow, StartWorkflowPayload
from schemas.common import Identifier
from services.api.deps import Authed, Gateway, Reader
from services.api.errors import rejection_error
from services.api.gateway import OutcomeTimeout
from services.api.run_reader import RunReader
from services.api.shapes import ExecuteRequest, Execution, execution_from_run
from services.common.clock import utcnow
from services.common.ids import derived_id, new_id

router = APIRouter()

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
_WAIT_POLL_SECONDS = 0.05
_DEFAULT_WAIT_SECONDS = 300.0


@router.post("/v1/workflows/{workflow_identifier}/execute", response_model=Execution)
async def execute(
    who: Authed,
    reader: Reader,
    gateway: Gateway,
    body: ExecuteRequest,
    workflow_identifier: Annotated[str, Path()],
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Execution:
    workflow_name = workflow_name_from_path(workflow_identifier)
    execution_id = body.execution_id or new_id()
    command_id = (
        derived_id("execute", who.user_id, idempotency_key) if idempotency_key else new_id()
    )
    command = StartWorkflow(
        command_id=command_id,
        execution_id=execution_id,
        issued_at=utcnow(),
        user_id=who.user_id,
        payload=StartWorkflowPayload(
            workflow_name=workflow_name,
            input=body.input if body.encoded_input is None else body.encoded_input,
            deployment_name=body.deployment_name or body.task_queue,
        ),
    )
    try:
        outcome = await gateway.send(command)
    except OutcomeTimeout as exc:
        raise HTTPException(status_code=504, detail=str(exc)) from exc
    if not outcome.accepted:
        raise rejection_error(outcome)
    if body.wait_for_result:
        run = await _wait_until_closed(
            reader, execution_id, body.timeout_seconds or _DEFAULT_WAIT_SECONDS
        )
    else:
        run = await reader.execution(execution_id)
    if run is None:  # the engine stored it; only a lost store gets here
        raise HTTPException(status_code=503, detail="execution accepted but not readable yet")
    return execution_from_run(run)


async def _wait_until_closed(
    reader: RunReader, execution_id: str, limit: float
) -> dict[str, Any] | None:
    """The execution once it leaves RUNNING, or as it is when `limit` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    run = await reader.execution(execution_id)
    while run is not None and run["status"] == "RUNNING" and loop.time() < deadline:
        await asyncio.sleep(_WAIT_POLL_SECONDS)
        run = await reader.execution(execution_id)
    return run


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
        raise HTTPException(
            status_code=422,
            detail=[
                {
                    "loc": ["path", "workflow_identifier"],
                    "msg": f"{name!r} is a reserved name",
                    "type": "value_error",
                }
            ],
        )
    return name
