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
from schemas.events import STATUS_AFTER, Event, EventType, closes_run
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
from services.common.readmodels.projection import apply_to_execution, apply_to_run

Document = dict[str, Any]

_WAIT_RECHECK_SECONDS = 2.0
_NO_EXTENSIONS = ExecuteExtensions()


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
    # A fresh id names an execution with no commit before this request's start.
    fresh = False
    if body.execution_id:
        execution_id = body.execution_id
    elif idempotency_key:
        # A retry must name the same execution, or its command would land elsewhere.
        execution_id = derived_id("execution", who.user_id, idempotency_key)
    else:
        execution_id, fresh = new_id(), True
    if api.access.separate and body.execution_id:
        existing = await api.all_runs.execution(execution_id)
        if existing is not None and not api.access.may_see(who, existing):
            raise HTTPException(
                status_code=409,
                detail=f"execution_id_taken: execution id {execution_id!r} belongs to another user",
            )
    try:
        # (Most bodies carry none: their options are the defaults, made once.)
        options = (
            ExecuteExtensions.model_validate(body.extensions) if body.extensions else _NO_EXTENSIONS
        )
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
            # Subscribe before the command goes out: the end cannot slip past unseen. Woken
            # by the events that close a run only (the others wait in its buffer).
            sub = api.fanout.subscribe(execution_id=execution_id, wake=closes_run)
            try:
                outcome = await apply_command(api.gateway, command)
                deadline = asyncio.get_running_loop().time() + limit
                run = None
                if fresh and outcome.seq == 1:
                    # Every event of the execution reaches `sub`, from its first.
                    sub, run = await _fold_until_closed(api.fanout, sub, execution_id, deadline)
                if run is None:
                    run = await _wait_until_closed(reader, api.fanout, sub, execution_id, deadline)
            finally:
                api.fanout.unsubscribe(sub)
            started = None
    if started is None:
        if run is None:  # the engine stored it; only a lost store gets here
            raise HTTPException(status_code=503, detail="execution accepted but not readable")
        started = execution_from_run(run)
    # Serialized here: FastAPI would validate the model again on the way out. (Straight
    # from the model's serializer: the bytes of `model_dump_json().encode()`, one copy less.)
    return started.__pydantic_serializer__.to_json(started)


async def _fold_until_closed(
    fanout: EventFanout, sub: Subscription, execution_id: str, deadline: float
) -> tuple[Subscription, Document | None]:
    """The execution once a live event closes its latest run, folded from the live events
    alone: no read. For an execution whose first event is this request's start (a fresh
    id), so `sub` receives all its events; the run is what a read would return (the same
    fold as the projector's and the reader's).

    None (with the subscription to go on waiting with) when the fold cannot answer: a gap
    or an overflow in the feed, a TERMINATED (a reset's commit goes on after it, with the
    new run), the deadline, or a silence of `_WAIT_RECHECK_SECONDS` (a stalled feed): the
    reading wait takes over from there."""
    loop = asyncio.get_running_loop()
    fold = _ExecutionFold()
    while (left := deadline - loop.time()) > 0:
        try:
            deliveries = await sub.take_when_woken(min(left, _WAIT_RECHECK_SECONDS))
        except SubscriberOverflow:
            fanout.unsubscribe(sub)
            return fanout.subscribe(execution_id=execution_id, wake=closes_run), None
        except FanoutFailed:
            return sub, None
        if not deliveries:
            return sub, None
        for delivery in deliveries:
            event = delivery.event
            if not fold.add(event):
                return sub, None
            if closes_run(event):
                if event.type is EventType.WORKFLOW_EXECUTION_TERMINATED:
                    return sub, None
                return sub, fold.latest_run()
    return sub, None


class _ExecutionFold:
    """An execution's latest run folded from its events, as long as they come complete:
    from its first (seq 1, index 0), each the next position (re-deliveries skipped)."""

    def __init__(self) -> None:
        self._at: tuple[int, int] | None = None
        self._pointer: Document | None = None
        self._runs: dict[str, Document] = {}

    def add(self, event: Event) -> bool:
        """Fold `event`; False if it leaves a gap (the fold is then unusable)."""
        seq, index = event.seq, event.index
        last = self._at
        if last is None:
            if (seq, index) != (1, 0):
                return False
        elif (seq, index) <= last:
            return True  # a re-published commit
        elif not ((seq == last[0] and index == last[1] + 1) or (seq == last[0] + 1 and index == 0)):
            return False
        self._at = (seq, index)
        if event.type not in STATUS_AFTER:
            # Changes only positions, which the run-closing event (folded) sets anyway
            # (tests/unit/test_list_index.py holds apply_to_run to that).
            return True
        self._pointer = apply_to_execution(self._pointer, event)
        run = apply_to_run(self._runs.get(event.run_id), event)
        if run is not None:
            self._runs[event.run_id] = run
        return True

    def latest_run(self) -> Document | None:
        if self._pointer is None:
            return None
        return self._runs.get(str(self._pointer["latest_run_id"]))


async def _wait_until_closed(
    reader: RunReader,
    fanout: EventFanout,
    sub: Subscription,
    execution_id: str,
    deadline: float,
) -> Document | None:
    """The execution once its status is terminal, or as it is when `deadline` passes.

    Woken by the execution's live events; re-reads now and then as well, so a stalled
    live feed only slows the answer down."""
    loop = asyncio.get_running_loop()
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
