"""HTTP API wiring: the Mistral Workflows REST contract over Runstore's read models and
command gateway (see shared/API.md for the contract as the official SDK speaks it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from pydantic import TypeAdapter, ValidationError

from schemas.commands import StartWorkflow, StartWorkflowPayload
from schemas.common import Identifier
from services.api.auth import ApiKeys, Caller
from services.api.errors import not_found, rejection_error
from services.api.gateway import CommandGateway, OutcomeTimeout
from services.api.run_list import BadPageToken, RunFilter
from services.api.run_reader import RunReader
from services.api.shapes import (
    ExecuteRequest,
    Execution,
    ExecutionList,
    execution_from_run,
    list_item_from_run,
)
from services.common.clock import utcnow
from services.common.ids import derived_id, new_id
from services.common.kafka_io import kafka_broker
from services.common.kafka_topics import ensure_topics
from services.common.mongo import mongo_client, mongo_database
from services.common.settings import ApiSettings

log = logging.getLogger(__name__)

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


async def _caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    keys: ApiKeys = request.app.state.api_keys
    found = keys.caller(authorization)
    if found is None:
        raise HTTPException(
            status_code=401,
            detail="missing or unknown API key (send Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


Authed = Annotated[Caller, Depends(_caller)]


def build_app(settings: ApiSettings) -> FastAPI:
    keys = ApiKeys(settings.api_keys)
    broker = kafka_broker(settings, client_id="runstore-api")
    client = mongo_client(settings)
    reader = RunReader(mongo_database(client, settings))
    gateway = CommandGateway(settings, broker)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if keys.dev_mode:
            log.warning(
                "RUNSTORE_API_KEYS is unset: DEV MODE, any bearer key is accepted as user 'dev'"
            )
        await ensure_topics(settings)
        await broker.connect()
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()
            await broker.stop()
            await client.close()

    app = FastAPI(title="Runstore", version="0.1.0", lifespan=lifespan)

    app.state.api_keys = keys

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/workflows/runs", response_model=ExecutionList)
    async def list_runs(
        who: Authed,
        workflow_identifier: str | None = None,
        root_execution_id: str | None = None,
        search: str | None = None,
        status: Annotated[list[str] | None, Query()] = None,
        deployment_name: str | None = None,
        sort_by: Literal["start_time", "end_time"] = "start_time",
        order: Literal["asc", "desc"] = "desc",
        start_time_after: datetime | None = None,
        start_time_before: datetime | None = None,
        end_time_after: datetime | None = None,
        end_time_before: datetime | None = None,
        user_id: str | None = None,
        include_internal: bool = True,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 50,
        next_page_token: str | None = None,
    ) -> ExecutionList:
        flt = RunFilter(
            workflow_name=workflow_identifier,
            root_execution_id=root_execution_id,
            search=search or None,
            statuses=tuple(status or ()),
            deployment_name=deployment_name,
            user_id=who.user_id if user_id == "current" else user_id,
            include_internal=include_internal,
            start_time_after=_utc(start_time_after),
            start_time_before=_utc(start_time_before),
            end_time_after=_utc(end_time_after),
            end_time_before=_utc(end_time_before),
            sort_by=sort_by,
            order=order,
        )
        try:
            rows, token = await reader.list_runs(flt, page_size, next_page_token or None)
        except BadPageToken as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        return ExecutionList(
            executions=[list_item_from_run(r) for r in rows], next_page_token=token
        )

    @app.get("/v1/workflows/runs/{run_id}", response_model=Execution)
    async def get_run(who: Authed, run_id: str) -> Execution:
        run = await reader.run(run_id)
        if run is None:
            raise not_found("run", run_id)
        return execution_from_run(run)

    @app.get("/v1/workflows/executions/{execution_id}", response_model=Execution)
    async def get_execution(
        who: Authed, execution_id: str, include_search_keys: bool = False
    ) -> Execution:
        run = await reader.execution(execution_id)
        if run is None:
            raise not_found("execution", execution_id)
        return execution_from_run(run, include_search_keys=include_search_keys)

    @app.post("/v1/workflows/{workflow_identifier}/execute", response_model=Execution)
    async def execute(
        who: Authed,
        request: Request,
        body: ExecuteRequest,
        workflow_identifier: Annotated[str, Path()],
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Execution:
        workflow_name = _workflow_name(workflow_identifier)
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
                execution_timeout_seconds=None,
            ),
        )
        try:
            outcome = await gateway.send(command)
        except OutcomeTimeout as exc:
            raise HTTPException(status_code=504, detail=str(exc)) from exc
        if not outcome.accepted:
            raise rejection_error(outcome)
        if body.wait_for_result:
            limit = body.timeout_seconds or _DEFAULT_WAIT_SECONDS
            run = await _wait_until_closed(reader, execution_id, limit)
        else:
            run = await reader.execution(execution_id)
        if run is None:  # the commit exists (the engine said so): only a lost store does this
            raise HTTPException(status_code=503, detail="execution accepted but not readable yet")
        return execution_from_run(run)

    return app


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


def _workflow_name(identifier: str) -> str:
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


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
