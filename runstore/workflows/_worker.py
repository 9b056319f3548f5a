"""The worker: takes workflow tasks of its deployment, replays, runs code, reports.

One consumer group per deployment (`worker.<deployment>`) on `workflows.tasks`; a task
names an execution, so all of one execution's tasks reach one worker, in order. A batch
is handled per execution (executions concurrently), and its offsets are committed only
after every command and reply it produced was acknowledged by Kafka: a worker that dies
mid-batch has its tasks redelivered, and replay makes that safe (a command is
identified by the history it was computed from, so the engine applies it once).
Activities run in the worker's executor (_activities.py); a task waits for them only
during its eager window (_task_driver.py), so a long activity never holds a batch.
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
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry.context import Context
from pydantic import ValidationError

from runstore.workflows._activities import ActivityExecutor
from runstore.workflows._api import ActivityFunction
from runstore.workflows._definitions import ActivityDefinition, WorkflowDefinition, definition_of
from runstore.workflows._errors import NondeterminismError, failure_of
from runstore.workflows._history import RunHistory
from runstore.workflows._instance import WorkflowInstance
from runstore.workflows._reports import Reporter
from runstore.workflows._requests import answer_query, reply, unknown_handler
from runstore.workflows._task_driver import TaskDriver
from runstore.workflows._task_spans import task_span
from schemas.common import Failure
from schemas.registry import WorkerRegistration
from schemas.replies import ReplyError, WorkerReply
from schemas.tasks import WorkflowTask
from services.common import tracing
from services.common.metrics import WORKFLOW_TASK_LATENCY, WORKFLOW_TASKS
from services.common.settings import WorkerSettings
from services.common.worker_registry import (
    execution_log_context,
)

log = logging.getLogger("runstore.worker")
user_logger = logging.getLogger("runstore.workflows.user")
"""`workflow.logger`'s records: also shipped to the execution's logs (the catalogue's)."""

_RUN_KINDS = frozenset({"run", "signal"})


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
        self.reporter = Reporter(self.settings, self.worker_id, self.deployment)
        self.executor = ActivityExecutor(
            self.settings.worker_activity_concurrency, self.reporter.report_activity
        )
        self.driver = TaskDriver(self.executor, self.settings, self.deployment)
        # The metrics' children of this deployment, looked up once (a `labels()` call costs
        # ~1 µs, three per task).
        self._task_latency = WORKFLOW_TASK_LATENCY.labels(self.deployment)
        self._task_counts = {
            outcome: WORKFLOW_TASKS.labels(self.deployment, outcome)
            for outcome in ("advanced", "failed", "error")
        }

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
        self.reporter.producer = producer

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
        await self.reporter.flush()

    async def _handle_execution(self, tasks: list[WorkflowTask]) -> None:
        execution_id = tasks[0].execution_id
        try:
            advance: WorkflowTask | None = None
            for task in tasks:
                if task.kind == "stop":
                    self._forget(execution_id, task.run_id)
                    self.executor.cancel_run(execution_id, task.run_id)
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
            self._task_counts[outcome].inc()
            self._task_latency.observe(time.perf_counter() - started)

    async def _advance_run(self, task: WorkflowTask) -> tuple[WorkflowInstance | None, str]:
        definition = self.workflows.get(task.workflow_name)
        if definition is None:
            await self.reporter.fail_task(
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
        try:
            with execution_log_context(
                task.execution_id, task.run_id, workflow_name=task.workflow_name
            ):
                instance = await self._instance_at(task, definition)
                if instance is None or instance.finished:
                    return instance, "advanced"
                instance.go_live()
                await self.driver.drive(instance)
        except (NondeterminismError, ValidationError, TypeError, KeyError) as exc:
            self._cache.pop(task.execution_id, None)
            log.error("workflow task of %s failed: %s", task.execution_id, exc)
            await self.reporter.fail_task(
                task.execution_id, task.run_id, max(task.seq, 1), failure_of(exc)
            )
            return None, "failed"
        await self._flush(instance)
        return instance, "advanced"

    async def _flush(self, instance: WorkflowInstance, command_id: str | None = None) -> None:
        """Report the instance's new steps (if any) and keep it for the run's next task.
        A run this report closes is kept too: until the engine has stored the report, a
        query or an update for the run can come, and a replay of a history without the
        close would run the code (and its activities) again; the cached instance waits for
        its own command instead (`RunHistory.catch_up`)."""
        if await self.reporter.complete_task(instance, command_id):
            self._remember(instance)

    # --- loading a run's history ----------------------------------------------------------

    async def _instance_at(
        self, task: WorkflowTask, definition: WorkflowDefinition
    ) -> WorkflowInstance | None:
        """The task's run with the history up to at least `task.seq` taken in."""
        execution_id, run_id, seq = task.execution_id, task.run_id, task.seq
        cached = self._cache.get(execution_id)
        if cached is not None and cached.run_id == run_id:
            fresh = await self._history.catch_up(cached, seq)
            if fresh:
                self._cache.move_to_end(execution_id)
                return cached
        self._cache.pop(execution_id, None)
        instance = (
            self._first_run(task, definition, task.timestamp_ns)
            if task.kind in _RUN_KINDS and seq == 1 and task.timestamp_ns is not None
            else await self._history.replay(execution_id, run_id, max(seq, 1), definition)
        )
        if instance is not None:
            self._remember(instance)
        return instance

    def _first_run(
        self, task: WorkflowTask, definition: WorkflowDefinition, started_ns: int
    ) -> WorkflowInstance:
        """The run of an execution's first task: its first commit holds only its STARTED,
        which the task carries, so the run starts without reading the history (two reads
        fewer per workflow). Newer commits, if any, bring their own tasks."""
        instance = WorkflowInstance(
            definition,
            execution_id=task.execution_id,
            run_id=task.run_id,
            input=task.input,
            attempt=task.attempt,
            activities=self.activities,
            started_ns=started_ns,
        )
        instance.applied_seq = 1
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
        await self.reporter.send(self.settings.topics.replies, task.execution_id, answer)

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
            await self.driver.drive(instance)
        except NondeterminismError as exc:
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
