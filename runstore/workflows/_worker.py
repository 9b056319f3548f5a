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
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from opentelemetry.context import Context
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection

from runstore.workflows._api import ActivityFunction, ActivityInfo, activity_context
from runstore.workflows._definitions import ActivityDefinition, WorkflowDefinition, definition_of
from runstore.workflows._errors import NondeterminismError, failure_of
from runstore.workflows._instance import ActivityRequest, WorkflowInstance
from runstore.workflows._task_spans import command_headers, task_span
from schemas.commands import (
    CompleteWorkflowTask,
    CompleteWorkflowTaskPayload,
    FailWorkflowTask,
    FailWorkflowTaskPayload,
)
from schemas.commits import Commit
from schemas.common import Failure
from schemas.events import Event, EventType
from schemas.registry import DeploymentDirective, WorkerRegistration, spec_of
from schemas.replies import ReplyError, WorkerReply
from schemas.tasks import WorkflowTask
from services.common import tracing
from services.common.commit_log import COMMITS, Document, read_commit
from services.common.health import Health, serve_health
from services.common.kafka_topics import ensure_topics
from services.common.metrics import (
    ACTIVITIES,
    WORKFLOW_TASK_LATENCY,
    WORKFLOW_TASKS,
    observe_consumed,
)
from services.common.mongo import mongo_client, mongo_database
from services.common.settings import WorkerSettings
from services.common.worker_registry import (
    ExecutionLogHandler,
    ExecutionLogShipper,
    WorkerRegistry,
    execution_log_context,
)

log = logging.getLogger("runstore.worker")
user_logger = logging.getLogger("runstore.workflows.user")
"""`workflow.logger`'s records: also shipped to the execution's logs (the catalogue's)."""

_RUN_KINDS = frozenset({"run", "signal"})
_OPENS_ATTEMPT = frozenset(
    {EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_RETRY_STARTED}
)


class _Rebuild(Exception):
    """The cached instance no longer matches the history: rebuild it by replay."""


class ActivityTimeoutError(TimeoutError):
    """An activity attempt overran its start-to-close or heartbeat timeout."""


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
        self._commits: AsyncCollection[Document] | None = None
        self._producer: AIOKafkaProducer | None = None

    # --- the process ------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        settings = self.settings
        await ensure_topics(settings)
        client = mongo_client(settings)
        self._commits = mongo_database(client, settings)[COMMITS]
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            linger_ms=settings.worker_linger_ms,
            acks="all",
            enable_idempotence=True,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.group(f"worker.{self.deployment}"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.worker_max_batch,
            group_instance_id=settings.worker_instance_id,
            session_timeout_ms=settings.worker_session_timeout_ms,
        )
        await self._producer.start()
        await consumer.start()
        health = Health(settings, client)
        probes = await serve_health(health, settings.health_host, settings.worker_health_port)
        listener = _ForgetOnRevoke(self._cache, health)
        consumer.subscribe([settings.topics.tasks], listener=listener)
        db = mongo_database(client, settings)
        registration = self.registration()
        seen_generation: int | None = None

        async def obey(directive: DeploymentDirective) -> None:
            # A stopped deployment pauses dispatch; a restart makes its workers rejoin.
            nonlocal seen_generation
            if directive.stopped:
                consumer.pause(*consumer.assignment())
            else:
                consumer.resume(*consumer.paused())
            if seen_generation is not None and directive.restart_generation > seen_generation:
                log.info("deployment %r restarted: rejoining the group", self.deployment)
                self._cache.clear()
                consumer.unsubscribe()
                consumer.subscribe([settings.topics.tasks], listener=listener)
            seen_generation = directive.restart_generation

        stop_heartbeats = asyncio.Event()
        heartbeats = asyncio.create_task(
            WorkerRegistry(db).run_heartbeats(registration, obey, stop_heartbeats)
        )
        shipper = ExecutionLogShipper(db, worker_id=self.worker_id, deployment_name=self.deployment)
        shipping = asyncio.create_task(shipper.run(1.0))
        handler = ExecutionLogHandler(shipper)
        user_logger.addHandler(handler)
        log.info(
            "worker %s serving deployment %r: workflows %s, activities %s",
            self.worker_id,
            self.deployment,
            sorted(self.workflows),
            sorted(self.activities),
        )
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                records = [r for batch in batches.values() for r in batch]
                if not records:
                    continue
                observe_consumed(f"worker.{self.deployment}", consumer, records)
                try:
                    await self.handle(
                        [r.value for r in records],
                        [r.headers for r in records] if tracing.tracer() else None,
                    )
                except Exception:
                    # Nothing of this batch is acknowledged: take it again from the last
                    # committed offsets after a pause (replay makes a second pass safe).
                    log.exception("a batch of tasks failed; retrying it")
                    await asyncio.sleep(1.0)
                    await consumer.seek_to_committed()
                    continue
                await consumer.commit()
        finally:
            stop_heartbeats.set()
            user_logger.removeHandler(handler)
            shipping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeats
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await shipping
            if probes is not None:
                probes.close()
            await health.close()
            await consumer.stop()
            await self._producer.stop()
            await client.close()

    def registration(self) -> WorkerRegistration:
        """What this worker tells the catalogue: who it is and what it serves."""
        return WorkerRegistration(
            worker_id=self.worker_id,
            deployment_name=self.deployment,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=self.settings.worker_version,
            workflows=[
                spec_of(
                    d.name,
                    d.run_method,
                    display_name=d.display_name,
                    description=d.description,
                )
                for d in self.workflows.values()
            ],
            heartbeat_interval_seconds=self.settings.worker_heartbeat_seconds,
        )

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
                    job = asyncio.create_task(self._run_activity(instance, request))
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
                for job in sorted(done, key=lambda j: _activity_order(running[j])):
                    request = running.pop(job)
                    result, error = job.result()
                    ACTIVITIES.labels(self.deployment, _activity_outcome(error)).inc()
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
            commits = await self._commits_after(instance.execution_id, instance.applied_seq)
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

    async def _run_activity(
        self, instance: WorkflowInstance, request: ActivityRequest
    ) -> tuple[Any, BaseException | None]:
        loop = asyncio.get_running_loop()
        last_beat = [loop.time()]
        info = ActivityInfo(
            execution_id=instance.execution_id,
            run_id=instance.run_id,
            workflow_name=instance.workflow_name,
            activity_id=request.activity_id,
            activity_name=request.definition.name,
            attempt=request.attempt,
        )
        token = activity_context.set((info, lambda: last_beat.__setitem__(0, loop.time())))
        try:
            with execution_log_context(
                instance.execution_id,
                instance.run_id,
                activity_id=request.activity_id,
                workflow_name=instance.workflow_name,
            ):
                job = asyncio.ensure_future(request.definition.fn(*request.args, **request.kwargs))
        finally:
            activity_context.reset(token)
        started = loop.time()
        stc = (
            request.start_to_close_timeout.total_seconds()
            if request.start_to_close_timeout
            else None
        )
        hb = request.heartbeat_timeout.total_seconds() if request.heartbeat_timeout else None
        try:
            while True:
                waits = [
                    w
                    for w in (
                        stc - (loop.time() - started) if stc else None,
                        hb - (loop.time() - last_beat[0]) if hb else None,
                    )
                    if w is not None
                ]
                done, _ = await asyncio.wait({job}, timeout=max(0.0, min(waits)) if waits else None)
                if done:
                    return job.result(), None
                if stc and loop.time() - started >= stc:
                    job.cancel()
                    return None, ActivityTimeoutError(f"start_to_close_timeout of {stc} s passed")
                if hb and loop.time() - last_beat[0] >= hb:
                    job.cancel()
                    return None, ActivityTimeoutError(f"no heartbeat for {hb} s")
        except Exception as exc:
            return None, exc

    # --- loading a run's history ----------------------------------------------------------

    async def _instance_at(
        self, execution_id: str, run_id: str, seq: int, definition: WorkflowDefinition
    ) -> WorkflowInstance | None:
        """The run's instance with the history up to at least `seq` taken in."""
        cached = self._cache.get(execution_id)
        if cached is not None and cached.run_id == run_id:
            fresh = await self._catch_up(cached, seq)
            if fresh:
                self._cache.move_to_end(execution_id)
                return cached
        self._cache.pop(execution_id, None)
        instance = await self._replay(execution_id, run_id, max(seq, 1), definition)
        if instance is not None:
            self._remember(instance)
        return instance

    async def _catch_up(self, instance: WorkflowInstance, seq: int) -> bool:
        """Apply the commits after the instance's; False if it must be rebuilt (another
        worker advanced the run, or the engine refused this worker's last command)."""
        own = instance.last_command_id
        waited = 0.0
        while True:
            commits = await self._commits_after(instance.execution_id, instance.applied_seq)
            last = commits[-1].seq if commits else instance.applied_seq
            own_seen = own is None or any(c.command_id == own for c in commits)
            if own_seen and last >= seq:
                break
            if waited >= self.settings.worker_own_command_wait_seconds:
                return False
            await asyncio.sleep(0.02)
            waited += 0.02
        for commit in commits:
            events = [e for e in commit.events if e.run_id == instance.run_id]
            if commit.command_id == own:
                instance.applied_seq = commit.seq
                instance.last_command_id = None
                continue
            if events and events[0].type == EventType.WORKFLOW_TASK_COMPLETED:
                return False
            instance.apply(events)
        return True

    async def _replay(
        self, execution_id: str, run_id: str, seq: int, definition: WorkflowDefinition
    ) -> WorkflowInstance | None:
        """Rebuild the run's instance from its history: back from `seq` to the commit that
        opened the current attempt, then forward to the newest commit."""
        commits: list[Commit] = []
        probe = seq
        opening: Event | None = None
        while probe >= 1:
            commit = await self._read(execution_id, probe)
            if commit is None:
                if commits:
                    break
                probe -= 1
                continue
            commits.append(commit)
            opening = next(
                (
                    e
                    for e in reversed(commit.events)
                    if e.run_id == run_id and e.type in _OPENS_ATTEMPT
                ),
                None,
            )
            if opening is not None:
                break
            probe -= 1
        if opening is None:
            log.warning("no start of run %s found in execution %s", run_id, execution_id)
            return None
        commits.reverse()
        commits.extend(await self._commits_after(execution_id, commits[-1].seq))
        state = commits[0].state
        started = state.get("started") or {}
        value = (started.get("input") or {}).get("value")
        instance = WorkflowInstance(
            definition,
            execution_id=execution_id,
            run_id=run_id,
            input=value,
            attempt=int(state.get("attempt") or 1),
            activities=self.activities,
            started_ns=opening.timestamp_ns,
        )
        # From the opening event on; a reset's RUN_RESET (just before its STARTED) too: the
        # instance takes the activity outcomes that reset carried over from it.
        events = [
            e
            for c in commits
            for e in c.events
            if e.run_id == run_id
            and (
                c.seq > opening.seq
                or e.index >= opening.index
                or e.type == EventType.WORKFLOW_RUN_RESET
            )
        ]
        instance.apply(events)
        return instance

    async def _commits_after(self, execution_id: str, after: int) -> list[Commit]:
        found: list[Commit] = []
        while (commit := await self._read(execution_id, after + len(found) + 1)) is not None:
            found.append(commit)
        return found

    async def _read(self, execution_id: str, seq: int) -> Commit | None:
        assert self._commits is not None
        return await read_commit(self._commits, execution_id, seq)

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
        reply = self._reply(
            task,
            error=ReplyError(
                code="query_failed" if kind == "query" else "update_failed",
                message=f"workflow {task.workflow_name!r} has no history this worker can load",
            ),
        )
        if instance is not None and definition is not None:
            reply = (
                self._query(instance, definition, task)
                if kind == "query"
                else await self._update(instance, definition, task)
            )
        await self._send(self.settings.topics.replies, task.execution_id, reply)

    def _reply(
        self,
        task: WorkflowTask,
        *,
        result: Any = None,
        error: ReplyError | None = None,
        command_id: str | None = None,
    ) -> WorkerReply:
        assert task.request_id is not None
        return WorkerReply(
            request_id=task.request_id,
            execution_id=task.execution_id,
            kind="update" if task.kind == "update" else "query",
            ok=error is None,
            result=result,
            error=error,
            command_id=command_id,
            worker_id=self.worker_id,
        )

    @staticmethod
    def _unknown(task: WorkflowTask, definition: WorkflowDefinition) -> ReplyError | None:
        """The error for a handler name the workflow does not have, with those it has."""
        kind = "update" if task.kind == "update" else "query"
        handlers = definition.updates if kind == "update" else definition.queries
        if task.name in handlers:
            return None
        return ReplyError(
            code="unknown_update" if kind == "update" else "unknown_query",
            message=f"workflow {definition.name!r} has no {kind} {task.name!r}",
            known_names=sorted(handlers),
        )

    def _query(
        self, instance: WorkflowInstance, definition: WorkflowDefinition, task: WorkflowTask
    ) -> WorkerReply:
        assert task.name is not None
        unknown = self._unknown(task, definition)
        if unknown is not None:
            return self._reply(task, error=unknown)
        try:
            return self._reply(task, result=instance.query(task.name, task.input))
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            return self._reply(task, error=ReplyError(code="query_failed", message=message))

    async def _update(
        self, instance: WorkflowInstance, definition: WorkflowDefinition, task: WorkflowTask
    ) -> WorkerReply:
        assert task.request_id is not None
        assert task.name is not None
        unknown = self._unknown(task, definition)
        if unknown is not None:
            return self._reply(task, error=unknown)
        if instance.finished:
            closed = ReplyError(code="update_rejected", message="the run is closed")
            return self._reply(task, error=closed)
        try:
            instance.validate_update(task.name, task.input)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            return self._reply(task, error=ReplyError(code="update_rejected", message=message))
        command_id = f"update:{task.request_id}"
        try:
            instance.go_live()
            instance.accept_update(task.request_id, task.name, task.input)
            await self._drive(instance)
        except (NondeterminismError, _Rebuild) as exc:
            self._cache.pop(task.execution_id, None)
            return self._reply(task, error=ReplyError(code="update_failed", message=str(exc)))
        outcome_result = instance.update_result(task.request_id)
        await self._flush(instance, command_id)
        if outcome_result is None:
            waiting = "the update handler is still waiting; its result will be in the history"
            error = ReplyError(code="update_failed", message=waiting)
            return self._reply(task, error=error, command_id=command_id)
        ok, value = outcome_result
        if not ok:
            error = ReplyError(code="update_failed", message=str(value))
            return self._reply(task, error=error, command_id=command_id)
        return self._reply(task, result=value, command_id=command_id)


class _ForgetOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Another worker may advance the executions of a revoked partition: cached instances
    are dropped (a later task rebuilds them from the history)."""

    def __init__(self, cache: OrderedDict[str, WorkflowInstance], health: Health) -> None:
        self.cache = cache
        self.health = health

    async def on_partitions_revoked(self, revoked: object) -> None:
        self.cache.clear()

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.health.assigned()


def _activity_outcome(error: BaseException | None) -> str:
    if error is None:
        return "completed"
    return "timed_out" if isinstance(error, ActivityTimeoutError) else "failed"


def _activity_order(request: ActivityRequest) -> tuple[int, str]:
    digits = "".join(ch for ch in request.activity_id if ch.isdigit())
    return (int(digits or 0), request.activity_id)


def run_worker(
    workflows: Sequence[type],
    activities: Sequence[Any] = (),
    *,
    deployment_name: str | None = None,
    settings: WorkerSettings | None = None,
) -> None:
    """Run a worker in this process until SIGINT/SIGTERM."""
    worker = Worker(workflows, activities, deployment_name=deployment_name, settings=settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    asyncio.run(main())


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
