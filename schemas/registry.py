"""What a worker tells Runstore about itself: the workflows it serves (the catalogue),
its liveness (heartbeats) and its log records (docs/catalogue.md).

A worker registers when it starts and then heartbeats every `heartbeat_interval_seconds`;
a worker whose last heartbeat is older than `missed_heartbeats` intervals is gone. Each
workflow it serves is a `WorkflowSpec`; `spec_of` derives one from the workflow's run
method (its JSON schemas come from the type hints).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, TypeAdapter

from schemas.common import FrozenModel, Identifier

__all__ = [
    "MISSED_HEARTBEATS",
    "DeploymentDirective",
    "LogRecord",
    "WorkerRegistration",
    "WorkflowSpec",
    "input_schema_of",
    "output_schema_of",
    "spec_of",
]

MISSED_HEARTBEATS = 3
"""A worker silent for this many of its heartbeat intervals is no longer listed."""


class WorkflowSpec(FrozenModel):
    """One workflow as a worker serves it."""

    name: Identifier
    display_name: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    tags: list[str] = Field(default_factory=list, max_length=50)
    version: str = "1"
    """The code version; each (workflow, deployment, version) is one registration."""


class WorkerRegistration(FrozenModel):
    """Sent on start and on every heartbeat (idempotent: the last one wins)."""

    worker_id: Identifier
    deployment_name: Identifier = "default"
    host: str = ""
    pid: int = 0
    version: str = ""
    """The worker's own (code or package) version."""
    workflows: list[WorkflowSpec] = Field(default_factory=list, max_length=1000)
    heartbeat_interval_seconds: float = Field(default=10.0, gt=0, le=3600)


class DeploymentDirective(FrozenModel):
    """What a heartbeat answers: whether the deployment is stopped (pause consuming
    tasks) and its restart generation (a worker that sees it grow reconnects)."""

    stopped: bool = False
    restart_generation: int = 0
    deleted: bool = False


Severity = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LogRecord(FrozenModel):
    """One line of the worker SDK's logger, about one execution."""

    execution_id: Identifier
    run_id: str | None = None
    activity_id: str | None = None
    workflow_name: str | None = None
    timestamp: datetime
    severity: Severity = "INFO"
    body: str = Field(max_length=16_384)
    attributes: dict[str, str] = Field(default_factory=dict)
    trace_id: str = ""
    span_id: str = ""


def input_schema_of(run: Callable[..., Any]) -> dict[str, Any]:
    """JSON Schema of a run method's input, from its type hints.

    A run method takes one argument (after `self`), usually a pydantic model: its schema
    is the input schema. Several arguments are described as an object of them; no
    argument as an empty object."""
    params = [
        p
        for p in inspect.signature(run).parameters.values()
        if p.name not in ("self", "cls")
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    hints = _hints(run)
    if not params:
        return {"type": "object", "properties": {}}
    if len(params) == 1:
        return _schema(hints.get(params[0].name, Any))
    return {
        "type": "object",
        "properties": {p.name: _schema(hints.get(p.name, Any)) for p in params},
        "required": [p.name for p in params if p.default is inspect.Parameter.empty],
    }


def output_schema_of(run: Callable[..., Any]) -> dict[str, Any] | None:
    """JSON Schema of a run method's return type; None when it is not annotated."""
    hints = _hints(run)
    if "return" not in hints or hints["return"] is type(None):
        return None
    return _schema(hints["return"])


def spec_of(
    name: str,
    run: Callable[..., Any],
    *,
    display_name: str | None = None,
    description: str | None = None,
    tags: list[str] | None = None,
    version: str = "1",
) -> WorkflowSpec:
    """A workflow's spec from its run method (description: the docstring's first
    paragraph unless given)."""
    doc = inspect.getdoc(run) or ""
    return WorkflowSpec(
        name=name,
        display_name=display_name,
        description=description if description is not None else (doc.split("\n\n")[0] or None),
        input_schema=input_schema_of(run),
        output_schema=output_schema_of(run),
        tags=list(tags or []),
        version=version,
    )


def _hints(run: Callable[..., Any]) -> dict[str, Any]:
    target = inspect.unwrap(run)
    try:
        return typing.get_type_hints(target)
    except (NameError, TypeError):
        # Forward references that cannot be resolved: describe as "any".
        return {}


def _schema(annotation: Any) -> dict[str, Any]:
    try:
        return TypeAdapter(annotation).json_schema()
    except Exception:
        return {}
