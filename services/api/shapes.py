"""Request and response bodies of the HTTP API, shaped as the official SDK expects
(see shared/API.md): required-but-nullable keys are always present."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Identifier, RetryPolicy


class ExecuteRequest(BaseModel):
    """`WorkflowExecutionRequest`: unknown fields are ignored, `null` means absent."""

    model_config = ConfigDict(extra="ignore")

    execution_id: Identifier | None = None
    input: Any = None
    wait_for_result: bool = False
    timeout_seconds: float | None = Field(default=None, gt=0)
    custom_tracing_attributes: dict[str, str] | None = None
    force_new_trace: bool = False
    traceparent: str | None = None
    extensions: dict[str, Any] | None = None
    task_queue: str | None = None
    deployment_name: str | None = None
    encoded_input: dict[str, Any] | None = None


class ExecuteExtensions(BaseModel):
    """The `extensions` of an execute body that Runstore reads (others are ignored): the
    run's execution timeout and retry policy, as on the Kafka StartWorkflow. Absent: no
    timeout, no retry (a failed run is FAILED)."""

    model_config = ConfigDict(extra="ignore")

    execution_timeout_seconds: float | None = Field(default=None, gt=0)
    retry_policy: RetryPolicy | None = None


class ExecutionListItem(BaseModel):
    workflow_name: str
    execution_id: str
    root_execution_id: str
    status: str | None
    start_time: datetime
    end_time: datetime | None
    workflow_id: str | None = None
    deployment_name: str | None = None
    parent_execution_id: str | None = None
    run_id: str | None = None
    user_id: str | None = None
    total_duration_ms: int | None = None


class Execution(ExecutionListItem):
    result: Any = None
    search_keys: dict[str, str | None] | None = None


MAX_PAGE_SIZE = 1000
"""Largest `page_size` of list_runs; more is a 422, never a silent cap (API.md §10.1)."""


class ExecutionList(BaseModel):
    executions: list[ExecutionListItem]
    next_page_token: str | None = None


def _run_fields(run: dict[str, Any]) -> dict[str, Any]:
    """The fields a list item and an execution share."""
    return {
        "workflow_name": run["workflow_name"],
        "execution_id": run["execution_id"],
        "root_execution_id": run["root_execution_id"],
        "status": run["status"],
        "start_time": run["start_time"],
        "end_time": run.get("end_time"),
        "workflow_id": run["workflow_name"],
        "deployment_name": run.get("deployment_name"),
        "parent_execution_id": run.get("parent_execution_id"),
        "run_id": run["run_id"],
        "user_id": run.get("user_id"),
        "total_duration_ms": run.get("total_duration_ms"),
    }


def execution_from_run(run: dict[str, Any], *, include_search_keys: bool = False) -> Execution:
    return Execution(
        **_run_fields(run),
        result=run_result(run),
        search_keys=search_keys_of(run) if include_search_keys else None,
    )


def run_result(run: dict[str, Any]) -> Any:
    """The run's result (None until it completes), decoded from its JSON text."""
    text = run.get("result_json")
    return None if text is None else json.loads(text)


def search_keys_of(run: dict[str, Any]) -> dict[str, str | None]:
    """The run's search keys, `{}` if it has none. Only string or null values: the SDK
    drops the whole map over one value of another type (API.md §5.1)."""
    keys = run.get("search_keys") or {}
    return {k: v for k, v in keys.items() if v is None or isinstance(v, str)}


def list_item_from_run(run: dict[str, Any]) -> ExecutionListItem:
    return ExecutionListItem(**_run_fields(run))


def history_body(run: dict[str, Any], lines: list[bytes], next_page_token: str | None) -> bytes:
    """A run's history as both history endpoints answer it (raw JSON, unmodelled by the
    SDK): the run's ids, its stored events oldest first (`event_number` 1, 2, …), and the
    paging extension's `next_page_token` (null when the events reach the end).

    `lines` are runs of event JSON texts joined by newlines, as history chunks and blocks
    hold them (`RunReader`'s HistoryPage): spliced in, never parsed; a run becomes a
    stretch of the array by turning its newlines into commas (JSON text holds no raw
    newline).
    """
    head = json.dumps(
        {
            "execution_id": run["execution_id"],
            "run_id": run["run_id"],
            "workflow_name": run["workflow_name"],
            "status": run["status"],
            "next_page_token": next_page_token,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    parts = [head[:-1].encode(), b',"events":[']
    for stretch in lines:
        parts += (stretch.replace(b"\n", b","), b",")
    if lines:
        parts.pop()  # the comma after the last stretch
    parts.append(b"]}")
    return b"".join(parts)  # one copy of the events into the body
