"""Queries and updates addressed to a workflow (docs/worker-protocol.md): the reply a worker
sends, and the checks both make before a handler runs."""

from __future__ import annotations

from typing import Any

from runstore.workflows._definitions import WorkflowDefinition
from runstore.workflows._instance import WorkflowInstance
from schemas.replies import ReplyError, WorkerReply
from schemas.tasks import WorkflowTask


def reply(
    task: WorkflowTask,
    worker_id: str,
    *,
    result: Any = None,
    error: ReplyError | None = None,
    command_id: str | None = None,
) -> WorkerReply:
    """The worker's answer to a query or update task."""
    assert task.request_id is not None
    return WorkerReply(
        request_id=task.request_id,
        execution_id=task.execution_id,
        kind="update" if task.kind == "update" else "query",
        ok=error is None,
        result=result,
        error=error,
        command_id=command_id,
        worker_id=worker_id,
    )


def unknown_handler(task: WorkflowTask, definition: WorkflowDefinition) -> ReplyError | None:
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


def answer_query(
    instance: WorkflowInstance, definition: WorkflowDefinition, task: WorkflowTask, worker_id: str
) -> WorkerReply:
    """Run a query handler on the instance (read-only: nothing is recorded)."""
    assert task.name is not None
    unknown = unknown_handler(task, definition)
    if unknown is not None:
        return reply(task, worker_id, error=unknown)
    try:
        return reply(task, worker_id, result=instance.query(task.name, task.input))
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        return reply(task, worker_id, error=ReplyError(code="query_failed", message=message))
