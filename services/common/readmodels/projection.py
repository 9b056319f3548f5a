"""Pure projection of events into read-model documents (no I/O).

Three document kinds, all addressed by `_id` so every point read is fast on any server:
- run (`runs`, `_id` = run_id): the list row of one run plus its result;
- execution pointer (`executions`, `_id` = execution_id): which run is the latest;
- history chunk (`history`, `_id` = `{run_id}:{chunk:06d}`): up to HISTORY_CHUNK events
  of a run, keyed by their event_number.

Each document records the position `(seq, index)` of the newest event it reflects, and an
event at or below that position is ignored: re-delivery and replays never move a read
model backwards or duplicate anything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.events import STATUS_AFTER, Event, EventType
from services.common.clock import ns_to_datetime

Document = dict[str, Any]

HISTORY_CHUNK = 100

_ENDING = {
    EventType.WORKFLOW_EXECUTION_COMPLETED,
    EventType.WORKFLOW_EXECUTION_FAILED,
    EventType.WORKFLOW_EXECUTION_CANCELED,
    EventType.WORKFLOW_EXECUTION_TERMINATED,
    EventType.WORKFLOW_EXECUTION_TIMED_OUT,
    EventType.WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}


def read_model_time(ns: int) -> datetime:
    """Event time at millisecond precision: what BSON dates keep, so a document folded
    in memory equals the same document read back from the store."""
    return ns_to_datetime(ns // 1_000_000 * 1_000_000)


def position(event: Event) -> list[int]:
    return [event.seq, event.index]


def is_newer(event: Event, doc: Document | None) -> bool:
    """Whether `event` comes after everything `doc` already reflects."""
    return doc is None or position(event) > list(doc.get("position", [0, -1]))


def apply_to_run(run: Document | None, event: Event) -> Document | None:
    """The run document after `event`; None if the run has not started yet."""
    if not is_newer(event, run):
        return run
    if event.type is EventType.WORKFLOW_EXECUTION_STARTED:
        a = event.attributes
        start = read_model_time(event.timestamp_ns)
        run = {
            "_id": event.run_id,
            "run_id": event.run_id,
            "execution_id": event.execution_id,
            "workflow_name": event.workflow_name,
            "display_name": a.display_name,
            "root_execution_id": event.root_execution_id,
            "parent_execution_id": event.parent_execution_id,
            "deployment_name": a.deployment_name,
            "user_id": a.user_id,
            "internal": a.internal,
            "search_keys": a.search_keys,
            "status": "RUNNING",
            "start_time": start,
            "end_time": None,
            "total_duration_ms": None,
            "result": None,
            "failure": None,
            "attempt": a.attempt,
        }
    elif run is None:
        return None  # an event of a run whose start we have not seen: nothing to show
    else:
        run = dict(run)
        status = STATUS_AFTER.get(event.type)
        if status is not None:
            run["status"] = status.value
        if event.type in _ENDING:
            end: datetime = read_model_time(event.timestamp_ns)
            run["end_time"] = end
            start_ns = int(run["start_time"].timestamp() * 1_000_000_000)
            run["total_duration_ms"] = max(0, (event.timestamp_ns - start_ns) // 1_000_000)
        if event.type is EventType.WORKFLOW_EXECUTION_COMPLETED:
            run["result"] = event.attributes.result.value
        if event.type is EventType.WORKFLOW_EXECUTION_FAILED:
            run["failure"] = event.attributes.failure.model_dump()
        if event.type is EventType.WORKFLOW_EXECUTION_RETRY_STARTED:
            run["attempt"] = event.attributes.attempt
    run["position"] = position(event)
    run["seq"] = event.seq
    return run


def apply_to_execution(pointer: Document | None, event: Event) -> Document | None:
    """The execution pointer after `event`: the latest run and the newest seq seen."""
    if not is_newer(event, pointer):
        return pointer
    if pointer is None and event.type is not EventType.WORKFLOW_EXECUTION_STARTED:
        return None
    latest = pointer["latest_run_id"] if pointer else event.run_id
    if event.type is EventType.WORKFLOW_EXECUTION_STARTED:
        latest = event.run_id
    return {
        "_id": event.execution_id,
        "latest_run_id": latest,
        "root_execution_id": event.root_execution_id,
        "position": position(event),
        "seq": event.seq,
    }


def history_chunk_id(run_id: str, event_number: int) -> str:
    return f"{run_id}:{(event_number - 1) // HISTORY_CHUNK:06d}"


def apply_to_history(chunk: Document | None, event: Event, event_json: Document) -> Document:
    """The history chunk holding `event`, with the event added if it was not already."""
    chunk_id = history_chunk_id(event.run_id, event.event_number)
    chunk = dict(chunk) if chunk else {"_id": chunk_id, "run_id": event.run_id, "events": {}}
    events = dict(chunk["events"])
    events.setdefault(str(event.event_number), event_json)
    chunk["events"] = events
    return chunk
