"""The start use case: what `POST /v1/workflows/{name}/execute` (and the catalogue's
execute-by-registration) does, shared by the route and the execute fast path
(execute_fast_path.py) so both answer alike."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError

from schemas.commands import StartWorkflow, StartWorkflowPayload
from schemas.common import ExecutionStatus
from schemas.outcomes import CommandOutcome
from services.api.auth import Caller
from services.api.catalogue import admit
from services.api.command_sending import apply_command, command_envelope
from services.api.deps import Wiring
from services.api.event_fanout import (
    EventFanout,
    FanoutFailed,
    SubscriberOverflow,
    Subscription,
)
from services.api.run_reader import RunReader
from services.api.shapes import ExecuteExtensions, ExecuteRequest, Execution, execution_from_run
from services.api.workflow_names import workflow_name_from_path
from services.common import tracing
from services.common.clock import to_milliseconds
from services.common.ids import derived_id, new_id

Document = dict[str, Any]

_WAIT_RECHECK_SECONDS = 2.0


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
    tags = await admit(api.catalogue, workflow_name, api.settings.api_allow_unregistered)
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
        raise HTTPException(
            status_code=422, detail=f"invalid extensions: {exc.errors(include_url=False)}"
        ) from exc
    command = StartWorkflow(
        **command_envelope("execute", who, execution_id, idempotency_key),
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
    with tracing.execute_span(
        f"execute {workflow_name}",
        body.traceparent,
        body.force_new_trace,
        body.custom_tracing_attributes,
    ):
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
        if run is None or not ExecutionStatus(run["status"]).is_open or left <= 0:
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
    return Execution(
        workflow_name=p.workflow_name,
        execution_id=command.execution_id,
        root_execution_id=command.root_execution_id,
        status=outcome.status.value,
        # Read models keep milliseconds (BSON dates): answer the same start_time as a read.
        start_time=to_milliseconds(outcome.decided_at),
        end_time=None,
        workflow_id=p.workflow_name,
        deployment_name=p.deployment_name,
        parent_execution_id=p.parent_execution_id,
        run_id=outcome.run_id,
        user_id=command.user_id,
        result=None,
    )
