"""Queries and updates: answered by the worker that runs the workflow (docs/api-gateway.md,
"Queries and updates"; the protocol is docs/worker-protocol.md).

| outcome | HTTP |
|---|---|
| the worker answered | 200 `{query_name, result}` / `{update_name, result}` |
| unknown query / update name | 400 `unknown_query: …` / `unknown_update: …` (the known names) |
| the update's validator refused it (nothing recorded) | 400 `update_rejected: …` |
| the handler raised | 409 `query_failed: …` / `update_failed: …` |
| update of a closed execution; the engine refused the update's record | 409 |
| no worker answered in time | 504 `no_worker_reply: …` |
| another user's execution (separate access mode) | 404, like an unknown one |
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel

from schemas.common import ExecutionStatus
from schemas.replies import WorkerReply
from schemas.tasks import WorkflowTask
from services.api import errors
from services.api.access import existing_execution
from services.api.auth import Caller
from services.api.command_sending import IdempotencyKey
from services.api.command_shapes import InvocationRequest, QueryResponse, UpdateResponse
from services.api.deps import Authorized, CallerReader
from services.api.responses import EVERY_ROUTE, declared
from services.api.worker_requests import NoReply, WorkerRequests
from services.common.ids import derived_id, new_id

# Every route can answer these (auth, request limits and deadlines, failure budget).
router = APIRouter(responses=declared(*EVERY_ROUTE))

Document = dict[str, Any]
ExecutionId = Annotated[str, Path()]


class ErrorBody(BaseModel):
    detail: str


@router.post(
    "/v1/workflows/executions/{execution_id}/queries",
    response_model=QueryResponse,
    responses=declared(400, 404, 409, 504),
)
async def query(
    request: Request,
    who: Authorized,
    reader: CallerReader,
    execution_id: ExecutionId,
    body: InvocationRequest,
) -> QueryResponse:
    run = await existing_execution(reader, execution_id)
    reply = await _ask(request, _task("query", who, run, body, new_id()))
    return QueryResponse(query_name=body.name, result=reply.result)


@router.post(
    "/v1/workflows/executions/{execution_id}/updates",
    response_model=UpdateResponse,
    responses=declared(400, 404, 409, 504),
)
async def update(
    request: Request,
    who: Authorized,
    reader: CallerReader,
    execution_id: ExecutionId,
    body: InvocationRequest,
    idempotency_key: IdempotencyKey = None,
) -> UpdateResponse:
    run = await existing_execution(reader, execution_id)
    if not ExecutionStatus(run["status"]).is_open:
        raise HTTPException(
            status_code=409,
            detail=f"execution_already_closed: execution {execution_id!r} is "
            f"{run['status']}; an update needs a running workflow",
        )
    # With an idempotency key a retried update carries the same request id, so the
    # command that records it (`update:{request_id}`) is applied once.
    request_id = (
        derived_id("update", who.user_id, execution_id, idempotency_key)
        if idempotency_key
        else new_id()
    )
    reply = await _ask(request, _task("update", who, run, body, request_id))
    return UpdateResponse(update_name=body.name, result=reply.result)


def _task(
    kind: str, who: Caller, run: Document, body: InvocationRequest, request_id: str
) -> WorkflowTask:
    return WorkflowTask(
        task_id=f"{kind}:{request_id}",
        kind="query" if kind == "query" else "update",
        execution_id=run["execution_id"],
        run_id=run["run_id"],
        seq=int(run.get("seq") or 0),
        workflow_name=run["workflow_name"],
        attempt=int(run.get("attempt") or 1),
        input=body.input,
        deployment_name=run.get("deployment_name"),
        request_id=request_id,
        name=body.name,
        user_id=who.user_id,
    )


async def _ask(request: Request, task: WorkflowTask) -> WorkerReply:
    workers: WorkerRequests = request.app.state.worker_requests
    try:
        reply, outcome = await workers.ask(task)
    except NoReply as exc:
        raise HTTPException(status_code=504, detail=f"no_worker_reply: {exc}") from exc
    if not reply.ok:
        raise _refusal(task, reply)
    if outcome is not None and not outcome.accepted:
        raise errors.rejection_error(outcome)
    return reply


def _refusal(task: WorkflowTask, reply: WorkerReply) -> HTTPException:
    error = reply.error
    if error is None:
        return HTTPException(status_code=409, detail=f"{task.kind}_failed: the worker refused")
    detail = f"{error.code}: {error.message}"
    if error.known_names:
        detail += f" (known {task.kind} names: {', '.join(sorted(error.known_names))})"
    status = 409 if error.code in ("query_failed", "update_failed") else 400
    return HTTPException(status_code=status, detail=detail)
