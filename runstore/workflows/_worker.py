"""The worker: takes workflow tasks of its deployment, replays, runs code, reports.

One consumer group per deployment (`worker.<deployment>`) on `workflows.tasks`; a task
names an execution, so all of one execution's tasks reach one worker, in order. A batch
is handled per execution (executions concurrently), and its offsets are committed only
after every command and reply it produced was acknowledged by Kafka: a worker that dies
mid-batch has its tasks redelivered, and replay makes that safe (a command is
identified by the history it was computed from, so the engine applies it once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry.context import Context
from pydantic import ValidationError

from runstore.workflows._activities import activity_order, activity_outcome, run_activity
from runstore.workflows._api import ActivityFunction
from runstore.workflows._definitions import ActivityDefinition, WorkflowDefinition, definition_of
from runstore.workflows._errors import NondeterminismError, failure_of
from runstore.workflows._history import RunHistory
from runstore.workflows._instance import ActivityRequest, WorkflowInstance
from runstore.workflows._requests import answer_query, reply, unknown_handler
from runstore.workflows._task_spans import command_headers, task_span
from schemas.commands import (
    CompleteWorkflowTask,
    CompleteWorkflowTaskPayload,
    FailWorkflowTask,
    FailWorkflowTaskPayload,
)
from schemas.common import Failure
from schemas.events import EventType
from schemas.registry import WorkerRegistration
from schemas.replies import ReplyError, WorkerReply
from schemas.tasks import WorkflowTask
from services.common import tracing
from services.common.metrics import (
    ACTIVITIES,
    WORKFLOW_TASK_LATENCY,
    WORKFLOW_TASKS,
)
from services.common.settings import WorkerSettings
from services.common.worker_registry import (
    execution_log_context,
)

log = logging.getLogger("runstore.worker")
user_logger = logging.getLogger("runstore.workflows.user")
"""`workflow.logger`'s records: also shipped to the execution's logs (the catalogue's)."""

_RUN_KINDS = frozenset({"run", "signal"})


class _Rebuild(Exception):
    """The cached instance no longer matches the history: rebuild it by replay."""


class Worker:
    """Hosts workflows and activities; `await Worker(...).run()` until stopped.

    `deployment_name` routes tasks: a start without a deployment goes to `default`.
    """

    def __init__(
        self,
        workflows: Sequence[type],
        activities: Sequence[Any] = (),
        *,
        deployment_name: str | None = None,
        settings: WorkerSettings | None = None,
    ) -> None:
        self.settings = settings or WorkerSettings()
        self.deployment = deployment_name or self.settings.worker_deployment
        self.worker_id = self.settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.workflows: dict[str, WorkflowDefinition] = {}
        for cls in workflows:
            definition = definition_of(cls)
            self.workflows[definition.name] = definition
        self.activities: dict[str, ActivityDefinition] = {}
        for fn in activities:
            if not isinstance(fn, ActivityFunction):
                raise TypeError(f"{fn!r} is not decorated with @activity")
            self.activities[fn.definition.name] = fn.definition
        self._cache: OrderedDict[str, WorkflowInstance] = OrderedDict()
        self._stopping = asyncio.Event()
        self._history_reader: RunHistory | None = None
        self._producer: AIOKafkaProducer | None = None

    @property
    def _history(self) -> RunHistory:
        assert self._history_reader is not None, "the worker is not running"
        return self._history_reader

    # --- the process ------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Serve until `stop()`: the Kafka consumer, catalogue presence, log shipping and
        probes live in `_process.serve`."""
        from runstore.workflows._process import serve

        await serve(self)

    def registration(self) -> WorkerRegistration:
        """What this worker tells the catalogue: who it is and what it serves."""
        from runstore.workflows._process import registration_of

        return registration_of(self)

    def attach(self, history: RunHistory, producer: AIOKafkaProducer) -> None:
        """The connections of the running process (made by `_process.serve`)."""
        self._history_reader = history
        self._producer = producer

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    def forget_all(self) -> None:
        """Drop every cached instance (partitions revoked, deployment restarted)."""
        self._cache.clear()

    async def handle(
        self,
        values: Iterable[bytes | None],
        headers: Sequence[Sequence[tuple[str, bytes]] | None] | None = None,
    ) -> None:
        """One batch of task records: grouped by execution, executions concurrently.
        `headers` (the records', when tracing is on) carry the tasks' trace contexts."""
        by_execution: dict[str, list[WorkflowTask]] = {}
        parents: dict[str, Context] = {}
        for index, raw in enumerate(values):
            try:
                task = WorkflowTask.model_validate_json(raw or b"")
            except ValidationError as exc:
                log.error("skipping a task record that is not a WorkflowTask: %s", exc)
                continue
            if (task.deployment_name or "default") != self.deployment:
                continue
            by_execution.setdefault(task.execution_id, []).append(task)
            parent = tracing.parent_of(headers[index]) if headers is not None else None
            if parent is not None:
                parents[task.task_id] = parent
        limit = asyncio.Semaphore(self.settings.worker_concurrency)

        async def one(tasks: list[WorkflowTask]) -> None:
            async with limit:
                with task_span(tasks, parents, self.deployment):
                    await self._handle_execution(tasks)

        await asyncio.gather(*(one(tasks) for tasks in by_execution.values()))
        assert self._producer is not None
        await self._producer.flush()

    async def _handle_execution(self, tasks: list[WorkflowTask]) -> None:
        execution_id = tasks[0].execution_id
        try:
            advance: WorkflowTask | None = None
            for task in tasks:
                if task.kind == "stop":
                    self._forget(execution_id, task.run_id)
                    advance = None
                elif task.kind in _RUN_KINDS:
                    advance = task if advance is None or task.seq >= advance.seq else advance
                else:
                    if advance is not None:
                        await self._advance(advance)
                        advance = None
                    await self._answer(task)
            if advance is not None:
                await self._advance(advance)
        except Exception:
            log.exception("tasks of execution %s failed; they will be redelivered", execution_id)
            self._cache.pop(execution_id, None)
            raise

    # --- advancing a run ----------------------------------------------------------------

    async def _advance(self, task: WorkflowTask) -> WorkflowInstance | None:
        """Advance the task's run; counted and timed by outcome in the worker's metrics."""
        started = time.perf_counter()
        outcome = "error"
        try:
            instance, outcome = await self._advance_run(task)
            return instance
        finally:
            WORKFLOW_TASKS.labels(self.deployment, outcome).inc()
            WORKFLOW_TASK_LATENCY.labels(self.deployment).observe(time.perf_counter() - started)

    async def _advance_run(self, task: WorkflowTask) -> tuple[WorkflowInstance | None, str]:
        definition = self.workflows.get(task.workflow_name)
        if definition is None:
            await self._send_failure(
                task.execution_id,
                task.run_id,
                max(task.seq, 1),
                Failure(
                    message=f"no worker of deployment {self.deployment!r} serves workflow "
                    f"{task.workflow_name!r}",
                    type="WorkflowNotRegistered",
                ),
            )
            return None, "failed"
        for _ in range(3):
            try:
                with execution_log_context(
                    task.execution_id, task.run_id, workflow_name=task.workflow_name
                ):
                    instance = await self._instance_at(
                        task.execution_id, task.run_id, task.seq, definition
                    )
                    if instance is None or instance.finished:
                        return instance, "advanced"
                    instance.go_live()
                    await self._drive(instance)
            except _Rebuild as why:
                log.info("rebuilding %s from its history: %s", task.execution_id, why)
                self._cache.pop(task.execution_id, None)
                continue
            except (NondeterminismError, ValidationError, TypeError, KeyError) as exc:
                self._cache.pop(task.execution_id, None)
                log.error("workflow task of %s failed: %s", task.execution_id, exc)
                await self._send_failure(
                    task.execution_id, task.run_id, max(task.seq, 1), failure_of(exc)
                )
                return None, "failed"
            await self._flush(instance)
            return instance, "advanced"
        raise RuntimeError(f"execution {task.execution_id}: its history kept moving under us")

    async def _flush(self, instance: WorkflowInstance, command_id: str | None = None) -> None:
        """Report the steps taken since the last report, computed from the history up to
        `applied_seq`; the command id derives from that, so a redelivered task that
        computes the same report is applied once."""
        steps = instance.take_steps()
        if not steps:
            return
        task_seq = instance.applied_seq
        command_id = command_id or f"wft:{instance.run_id}:{task_seq}"
        command = CompleteWorkflowTask(
            command_id=command_id,
            execution_id=instance.execution_id,
            issued_at=datetime.now(UTC),
            payload=CompleteWorkflowTaskPayload(
                run_id=instance.run_id,
                task_seq=task_seq,
                worker_id=self.worker_id,
                steps=steps,
            ),
        )
        await self._send(self.settings.topics.commands, instance.execution_id, command)
        instance.last_command_id = command_id
        self._remember(instance)

    async def _send_failure(
        self, execution_id: str, run_id: str, task_seq: int, failure: Failure
    ) -> None:
        command = FailWorkflowTask(
            command_id=f"wft-fail:{run_id}:{task_seq}",
            execution_id=execution_id,
            issued_at=datetime.now(UTC),
            payload=FailWorkflowTaskPayload(
                run_id=run_id, task_seq=task_seq, failure=failure, worker_id=self.worker_id
            ),
        )
        await self._send(self.settings.topics.commands, execution_id, command)

    async def _send(self, topic: str, key: str, model: Any) -> None:
        assert self._producer is not None
        await self._producer.send(
            topic,
            key=key.encode(),
            value=model.model_dump_json().encode(),
            headers=command_headers(),
        )

    async def _drive(self, instance: WorkflowInstance) -> None:
        """Run the activities the code asks for, feeding each result back, until the
        code waits on something only a later task can bring (a timer, a signal …)."""
        running: dict[asyncio.Task[tuple[Any, BaseException | None]], ActivityRequest] = {}
        loop = asyncio.get_running_loop()
        last_report = loop.time()
        try:
            while True:
                for request in instance.take_activity_requests():
                    job = asyncio.create_task(run_activity(instance, request))
                    running[job] = request
                if not running:
                    return
                if (
                    instance.has_steps()
                    and loop.time() - last_report >= self.settings.worker_checkpoint_seconds
                ):
                    await self._checkpoint(instance)
                    last_report = loop.time()
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for job in sorted(done, key=lambda j: activity_order(running[j])):
                    request = running.pop(job)
                    result, error = job.result()
                    ACTIVITIES.labels(self.deployment, activity_outcome(error)).inc()
                    instance.activity_outcome(request.activity_id, request.attempt, result, error)
                for job, request in list(running.items()):
                    if instance.activity_abandoned(request.activity_id):
                        job.cancel()
                        del running[job]
        finally:
            for job in running:
                job.cancel()

    async def _checkpoint(self, instance: WorkflowInstance) -> None:
        """Report the steps so far while activities still run, and wait until the history
        holds them: a long task keeps its progress if the worker dies."""
        await self._flush(instance)
        assert self._producer is not None
        await self._producer.flush()
        own = instance.last_command_id
        waited = 0.0
        while waited < self.settings.worker_own_command_wait_seconds:
            commits = await self._history.commits_after(instance.execution_id, instance.applied_seq)
            position = next((i for i, c in enumerate(commits) if c.command_id == own), None)
            if position is not None:
                for commit in commits[:position]:
                    events = [e for e in commit.events if e.run_id == instance.run_id]
                    if events and events[0].type == EventType.WORKFLOW_TASK_COMPLETED:
                        raise _Rebuild("another worker advanced the run")
                    instance.apply(events)
                mine = commits[position]
                instance.applied_seq = mine.seq
                instance.last_command_id = None
                instance.deliver_inputs(up_to=mine.seq)
                return
            await asyncio.sleep(0.01)
            waited += 0.01
        raise _Rebuild("the engine did not take the worker's checkpoint")

    # --- loading a run's history ----------------------------------------------------------

    async def _instance_at(
        self, execution_id: str, run_id: str, seq: int, definition: WorkflowDefinition
    ) -> WorkflowInstance | None:
        """The run's instance with the history up to at least `seq` taken in."""
        cached = self._cache.get(execution_id)
        if cached is not None and cached.run_id == run_id:
            fresh = await self._history.catch_up(cached, seq)
            if fresh:
                self._cache.move_to_end(execution_id)
                return cached
        self._cache.pop(execution_id, None)
        instance = await self._history.replay(execution_id, run_id, max(seq, 1), definition)
        if instance is not None:
            self._remember(instance)
        return instance

    def _remember(self, instance: WorkflowInstance) -> None:
        self._cache[instance.execution_id] = instance
        self._cache.move_to_end(instance.execution_id)
        while len(self._cache) > self.settings.worker_cache_size:
            self._cache.popitem(last=False)

    def _forget(self, execution_id: str, run_id: str) -> None:
        cached = self._cache.get(execution_id)
        if cached is not None and cached.run_id == run_id:
            del self._cache[execution_id]

    # --- queries and updates -------------------------------------------------------------

    async def _answer(self, task: WorkflowTask) -> None:
        assert task.request_id is not None
        assert task.name is not None
        kind = "update" if task.kind == "update" else "query"
        definition = self.workflows.get(task.workflow_name)
        # Brought up to date first: inputs the code has not seen yet are delivered.
        instance = await self._advance(task) if definition is not None else None
        answer = reply(
            task,
            self.worker_id,
            error=ReplyError(
                code="query_failed" if kind == "query" else "update_failed",
                message=f"workflow {task.workflow_name!r} has no history this worker can load",
            ),
        )
        if instance is not None and definition is not None:
            answer = (
                answer_query(instance, definition, task, self.worker_id)
                if kind == "query"
                else await self._update(instance, definition, task)
            )
        await self._send(self.settings.topics.replies, task.execution_id, answer)

    async def _update(
        self, instance: WorkflowInstance, definition: WorkflowDefinition, task: WorkflowTask
    ) -> WorkerReply:
        assert task.request_id is not None
        assert task.name is not None
        unknown = unknown_handler(task, definition)
        if unknown is not None:
            return reply(task, self.worker_id, error=unknown)
        if instance.finished:
            closed = ReplyError(code="update_rejected", message="the run is closed")
            return reply(task, self.worker_id, error=closed)
        try:
            instance.validate_update(task.name, task.input)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            return reply(
                task, self.worker_id, error=ReplyError(code="update_rejected", message=message)
            )
        command_id = f"update:{task.request_id}"
        try:
            instance.go_live()
            instance.accept_update(task.request_id, task.name, task.input)
            await self._drive(instance)
        except (NondeterminismError, _Rebuild) as exc:
            self._cache.pop(task.execution_id, None)
            return reply(
                task, self.worker_id, error=ReplyError(code="update_failed", message=str(exc))
            )
        outcome_result = instance.update_result(task.request_id)
        await self._flush(instance, command_id)
        if outcome_result is None:
            waiting = "the update handler is still waiting; its result will be in the history"
            error = ReplyError(code="update_failed", message=waiting)
            return reply(task, self.worker_id, error=error, command_id=command_id)
        ok, value = outcome_result
        if not ok:
            error = ReplyError(code="update_failed", message=str(value))
            return reply(task, self.worker_id, error=error, command_id=command_id)
        return reply(task, self.worker_id, result=value, command_id=command_id)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
