"""How a worker registers, heartbeats and ships its log records (docs/catalogue.md).

The worker SDK calls this library; the API reads what it writes. Transport: direct
MongoDB writes, each keyed by `_id` — the worker already reads the event store there
(docs/worker-protocol.md), every document written here has one writer (a worker its own
document; a workflow's and a deployment's code fields are the same from every worker of
a version, so the last writer wins harmlessly), and nothing needs ordering across
workers, so a topic and a projector would add a hop and a process for no guarantee.

Collections (all small but `execution_logs`):
- `catalogue_workflows` `_id` = workflow name: what workers registered (`code`) and what
  users edited (`edits`, `user_tags`, `archived`), kept apart so a re-registration never
  undoes an edit.
- `catalogue_registrations` `_id` = `"{name}:{deployment}:{version}"`: one per workflow
  version a deployment serves (the SDK's "workflow registration").
- `catalogue_deployments` `_id` = name: `stopped`, `restart_generation` (the directive a
  heartbeat answers), created on first registration or by `create_deployment`.
- `catalogue_workers` `_id` = worker id: host, pid, version, workflows, last heartbeat.
- `execution_logs` `_id` = `"{execution_id}:{chunk:06d}"`: up to `LOG_CHUNK_RECORDS`
  records per chunk document, at most `max_chunks` chunks per execution (the cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from schemas.registry import DeploymentDirective, LogRecord, WorkerRegistration

Document = dict[str, Any]

WORKFLOWS = "catalogue_workflows"
REGISTRATIONS = "catalogue_registrations"
DEPLOYMENTS = "catalogue_deployments"
WORKERS = "catalogue_workers"
EXECUTION_LOGS = "execution_logs"

LOG_CHUNK_RECORDS = 100
"""Records per log chunk document (one insert ships up to this many)."""
DEFAULT_LOG_CHUNKS = 10
"""Chunks per execution by default: 1,000 records; later records are dropped (counted)."""

log = logging.getLogger(__name__)


def registration_id(name: str, deployment: str, version: str) -> str:
    return f"{name}:{deployment}:{version}"


def log_chunk_id(execution_id: str, chunk: int) -> str:
    return f"{execution_id}:{chunk:06d}"


def _now() -> datetime:
    return datetime.now(UTC)


async def ensure_catalogue_indexes(db: AsyncDatabase[Document]) -> None:
    """The secondary indexes of the list reads over these collections (the API creates
    them at start): a deployment's workers; a deployment's log chunks in shipping order."""
    await db[WORKERS].create_index([("deployment_name", 1), ("_id", 1)])
    await db[EXECUTION_LOGS].create_index([("deployment_name", 1), ("shipped_at", 1), ("_id", 1)])


class WorkerRegistry:
    """Registration and heartbeats of one worker process."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def register(self, reg: WorkerRegistration) -> DeploymentDirective:
        """Record the worker, the workflows it serves and its deployment; answer the
        deployment's directive. Idempotent: the heartbeat calls it again."""
        now = _now()
        for spec in reg.workflows:
            await self._upsert(
                WORKFLOWS,
                spec.name,
                {
                    "$set": {
                        "name": spec.name,
                        "code": {
                            "display_name": spec.display_name,
                            "description": spec.description,
                            "tags": spec.tags,
                        },
                        "last_registered_at": now,
                    },
                    "$addToSet": {"deployment_names": reg.deployment_name},
                    "$setOnInsert": {"created_at": now, "archived": False, "user_tags": []},
                },
            )
            await self._upsert(
                REGISTRATIONS,
                registration_id(spec.name, reg.deployment_name, spec.version),
                {
                    "$set": {
                        "workflow_name": spec.name,
                        "deployment_name": reg.deployment_name,
                        "version": spec.version,
                        "input_schema": spec.input_schema,
                        "output_schema": spec.output_schema,
                        "last_heartbeat": now,
                    },
                    "$setOnInsert": {"created_at": now},
                },
            )
        await self._upsert(
            DEPLOYMENTS,
            reg.deployment_name,
            {
                "$set": {"last_heartbeat": now},
                "$setOnInsert": {
                    "created_at": now,
                    "updated_at": now,
                    "stopped": False,
                    "restart_generation": 0,
                },
            },
        )
        await self._upsert(
            WORKERS,
            reg.worker_id,
            {
                "$set": {
                    "deployment_name": reg.deployment_name,
                    "host": reg.host,
                    "pid": reg.pid,
                    "version": reg.version,
                    "workflows": [w.name for w in reg.workflows],
                    "heartbeat_interval_seconds": reg.heartbeat_interval_seconds,
                    "last_heartbeat": now,
                },
                "$setOnInsert": {"created_at": now},
            },
        )
        return await self.directive(reg.deployment_name)

    async def directive(self, deployment_name: str) -> DeploymentDirective:
        doc = await self._db[DEPLOYMENTS].find_one({"_id": deployment_name})
        if doc is None:
            return DeploymentDirective(deleted=True)
        return DeploymentDirective(
            stopped=bool(doc.get("stopped", False)),
            restart_generation=int(doc.get("restart_generation", 0)),
        )

    async def unregister(self, worker_id: str) -> None:
        """A worker that stops cleanly leaves the list at once (else after its
        heartbeats are missed)."""
        await self._db[WORKERS].delete_one({"_id": worker_id})

    async def run_heartbeats(
        self,
        reg: WorkerRegistration,
        on_directive: Callable[[DeploymentDirective], Awaitable[None]] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Register now and every `reg.heartbeat_interval_seconds` until `stop` is set
        (or the task is cancelled); then unregister. `on_directive` sees each answer
        (pause consuming when `stopped`, reconnect when `restart_generation` grows).
        A failed heartbeat is logged and retried at the next interval."""
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    directive = await self.register(reg)
                except PyMongoError:
                    log.warning("heartbeat of worker %s failed", reg.worker_id, exc_info=True)
                else:
                    if on_directive is not None:
                        await on_directive(directive)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), reg.heartbeat_interval_seconds)
        finally:
            with contextlib.suppress(PyMongoError):
                await self.unregister(reg.worker_id)

    async def _upsert(self, collection: str, key: str, update: Document) -> None:
        try:
            await self._db[collection].update_one({"_id": key}, update, upsert=True)
        except DuplicateKeyError:
            # Two upserts of a new key raced; the document exists now: update it.
            await self._db[collection].update_one({"_id": key}, update, upsert=True)


# --- execution logs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogContext:
    execution_id: str
    run_id: str | None = None
    activity_id: str | None = None
    workflow_name: str | None = None


current_log_context: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar(
    "runstore_log_context", default=None
)


@contextlib.contextmanager
def execution_log_context(
    execution_id: str,
    run_id: str | None = None,
    activity_id: str | None = None,
    workflow_name: str | None = None,
) -> Iterator[None]:
    """Inside this block, records of the worker's logger belong to this execution."""
    token = current_log_context.set(LogContext(execution_id, run_id, activity_id, workflow_name))
    try:
        yield
    finally:
        current_log_context.reset(token)


class ExecutionLogShipper:
    """Buffers log records in memory and writes them as chunk documents per execution.

    `add` is synchronous (safe from a logging handler); `flush` writes what is buffered;
    `run` flushes every `interval_seconds` until cancelled, then once more. Records past
    an execution's cap (`max_chunks` x 100) are dropped and counted in `dropped`."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        *,
        worker_id: str,
        deployment_name: str = "default",
        max_chunks: int = DEFAULT_LOG_CHUNKS,
        max_buffer: int = 10_000,
    ) -> None:
        self._db = db
        self._worker_id = worker_id
        self._deployment = deployment_name
        self._max_chunks = max_chunks
        self._max_buffer = max_buffer
        self._buffer: list[LogRecord] = []
        self._next_chunk: dict[str, int] = {}
        self.dropped = 0

    def add(self, record: LogRecord) -> None:
        if len(self._buffer) >= self._max_buffer:
            self.dropped += 1
            return
        self._buffer.append(record)

    async def flush(self) -> None:
        pending, self._buffer = self._buffer, []
        by_execution: dict[str, list[LogRecord]] = {}
        for record in pending:
            by_execution.setdefault(record.execution_id, []).append(record)
        for execution_id, records in by_execution.items():
            for start in range(0, len(records), LOG_CHUNK_RECORDS):
                await self._write(execution_id, records[start : start + LOG_CHUNK_RECORDS])

    async def run(self, interval_seconds: float = 1.0) -> None:
        try:
            while True:
                await asyncio.sleep(interval_seconds)
                try:
                    await self.flush()
                except PyMongoError:
                    log.warning("shipping execution logs failed", exc_info=True)
        finally:
            with contextlib.suppress(PyMongoError):
                await self.flush()

    async def _write(self, execution_id: str, records: list[LogRecord]) -> None:
        chunk = await self._first_free_chunk(execution_id)
        while chunk < self._max_chunks:
            doc = {
                "_id": log_chunk_id(execution_id, chunk),
                "execution_id": execution_id,
                "chunk": chunk,
                "deployment_name": self._deployment,
                "worker_id": self._worker_id,
                "shipped_at": _now(),
                "records": [r.model_dump(mode="json", exclude={"execution_id"}) for r in records],
            }
            try:
                await self._db[EXECUTION_LOGS].insert_one(doc)
            except DuplicateKeyError:
                chunk += 1  # another worker wrote this chunk first
                continue
            self._next_chunk[execution_id] = chunk + 1
            return
        self._next_chunk[execution_id] = chunk
        self.dropped += len(records)

    async def _first_free_chunk(self, execution_id: str) -> int:
        chunk = self._next_chunk.get(execution_id)
        if chunk is not None:
            return chunk
        chunk = 0
        coll = self._db[EXECUTION_LOGS]
        while chunk < self._max_chunks and await coll.find_one(
            {"_id": log_chunk_id(execution_id, chunk)}, {"_id": 1}
        ):
            chunk += 1
        return chunk


class ExecutionLogHandler(logging.Handler):
    """A logging handler for the worker SDK's logger: records emitted inside
    `execution_log_context` (or with `extra={"execution_id": …}`) go to the shipper;
    others are ignored."""

    def __init__(self, shipper: ExecutionLogShipper, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._shipper = shipper

    def emit(self, record: logging.LogRecord) -> None:
        ctx = current_log_context.get()
        execution_id = getattr(record, "execution_id", None) or (ctx and ctx.execution_id)
        if not execution_id:
            return
        try:
            self._shipper.add(
                LogRecord(
                    execution_id=execution_id,
                    run_id=getattr(record, "run_id", None) or (ctx and ctx.run_id) or None,
                    activity_id=getattr(record, "activity_id", None)
                    or (ctx and ctx.activity_id)
                    or None,
                    workflow_name=getattr(record, "workflow_name", None)
                    or (ctx and ctx.workflow_name)
                    or None,
                    timestamp=datetime.fromtimestamp(record.created, UTC),
                    severity=_severity(record.levelno),
                    body=self.format(record)[:16_384],
                    attributes={"logger": record.name},
                )
            )
        except ValueError:
            self.handleError(record)


def _severity(levelno: int) -> Any:
    if levelno >= logging.CRITICAL:
        return "CRITICAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG"
