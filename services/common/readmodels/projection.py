"""Pure projection of events into read-model documents (no I/O).

Three document kinds, all addressed by `_id` so every point read is fast on any server:
- run (`runs`, `_id` = run_id): the list row of one run plus its result and failure (as
  JSON text: `result_json`, `failure_json`, because a value nested in arrays cannot be
  stored as a document by FerretDB 1.x), and the `search_terms` / `workflow_tags` arrays
  list filters match on;
- execution pointer (`executions`, `_id` = execution_id): which run is the latest;
- history chunk (`history`, `_id` = `{run_id}:{chunk:06d}`): up to HISTORY_CHUNK events
  of a run, as JSON text (see `apply_to_history`). Chunk 0 of a run whose first event
  opened its row lives in the row instead (`history_head`, the chunk's fields), so a start
  writes a row and a pointer and no history document; it moves out to its chunk document
  for good when its text outgrows HEAD_MAX_TEXT_CHARS. A run opened by a reset (first event
  WORKFLOW_RUN_RESET, no row yet) keeps chunk 0 as a document, and so does a run written
  before heads existed (a row without a head);
- history block (`history`, `_id` = `{run_id}:b{block:06d}`): HISTORY_BLOCK events, the
  ten full chunks of a block joined, made once when the block's last event is folded
  (`seal_block`) and never changed.

Run documents and execution pointers record the position `(seq, index)` of the newest
event they reflect, and an event at or below that position is ignored; history chunks
key events by `event_number` and never replace one; a block is made only if absent. So
re-delivery and replays never move a read model backwards or duplicate anything, and
folding the same events in the same order always gives the same documents (what the
rebuild relies on).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.events import STATUS_AFTER, Event, EventType, closes_run
from services.common.clock import ns_to_datetime, to_milliseconds
from services.common.readmodels.history_chunks import (
    HEAD_MAX_TEXT_CHARS,
    HISTORY_BLOCK,
    HISTORY_CHUNK,
    HISTORY_HEAD,
    apply_to_history,
    chunk_text_chars,
    head_chunk,
    head_docs,
    head_of,
    history_block_key,
    history_block_of,
    history_chunk_id,
    history_ids_of,
    merged_chunk,
    seal_block,
    stored_chunk,
    stored_run,
)
from services.common.readmodels.search_keys import search_terms

Document = dict[str, Any]


def read_model_time(ns: int) -> datetime:
    """Event time at millisecond precision: what BSON dates keep, so a document folded
    in memory equals the same document read back from the store."""
    return to_milliseconds(ns_to_datetime(ns))


def position(event: Event) -> list[int]:
    return [event.seq, event.index]


def is_newer(event: Event, doc: Document | None) -> bool:
    """Whether `event` comes after everything `doc` already reflects."""
    return doc is None or position(event) > list(doc.get("position", [0, -1]))


def apply_to_run(run: Document | None, event: Event) -> Document | None:
    """The run document after `event`; None if the run has not started yet.

    Returns `run` itself (the same object) when the event changes nothing.
    """
    if not is_newer(event, run):
        return run
    if event.type is EventType.WORKFLOW_EXECUTION_STARTED:
        a = event.attributes
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
            "search_terms": search_terms(a.search_keys),
            "workflow_tags": sorted(set(a.workflow_tags or ())),
            "status": "RUNNING",
            "start_time": read_model_time(event.timestamp_ns),
            "end_time": None,
            "total_duration_ms": None,
            "result_json": None,
            "failure_json": None,
            "attempt": a.attempt,
        }
    elif run is None:
        # A run opened by a reset starts with WORKFLOW_RUN_RESET, then STARTED: there is
        # nothing to show until the STARTED event.
        return None
    else:
        run = dict(run)
        status = STATUS_AFTER.get(event.type)
        if status is not None:
            run["status"] = status.value
        if closes_run(event):
            run["end_time"] = read_model_time(event.timestamp_ns)
            start_ms = round(run["start_time"].timestamp() * 1000)
            run["total_duration_ms"] = max(0, event.timestamp_ns // 1_000_000 - start_ms)
        if event.type is EventType.WORKFLOW_EXECUTION_COMPLETED:
            run["result_json"] = json.dumps(event.attributes.result.value)
        if event.type is EventType.WORKFLOW_EXECUTION_FAILED:
            run["failure_json"] = event.attributes.failure.model_dump_json()
        if event.type is EventType.WORKFLOW_EXECUTION_RETRY_STARTED:
            run["attempt"] = event.attributes.attempt
    run["event_count"] = event.event_number
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
    root = pointer["root_execution_id"] if pointer else event.root_execution_id
    if event.type is EventType.WORKFLOW_EXECUTION_STARTED:
        latest, root = event.run_id, event.root_execution_id
    return {
        "_id": event.execution_id,
        "latest_run_id": latest,
        "root_execution_id": root,
        "position": position(event),
        "seq": event.seq,
    }


@dataclass
class ReadModelDocs:
    """Documents by `_id` for each read model, and which of them a fold changed."""

    runs: dict[str, Document] = field(default_factory=dict)
    executions: dict[str, Document] = field(default_factory=dict)
    history: dict[str, Document] = field(default_factory=dict)
    changed_runs: set[str] = field(default_factory=set)
    changed_executions: set[str] = field(default_factory=set)
    changed_history: set[str] = field(default_factory=set)

    def changes(self) -> tuple[dict[str, Document], dict[str, Document], dict[str, Document]]:
        """Changed (history, runs, executions) documents, as they are written, in the
        order they are written in."""
        return (
            {i: stored_chunk(self.history[i]) for i in self.changed_history},
            {i: stored_run(self.runs[i]) for i in self.changed_runs},
            {i: self.executions[i] for i in self.changed_executions},
        )


def ids_touched(events: Iterable[Event]) -> tuple[set[str], set[str], set[str]]:
    """(run ids, execution ids, history ids) that folding `events` reads or changes."""
    runs: set[str] = set()
    executions: set[str] = set()
    chunks: set[str] = set()
    for e in events:
        runs.add(e.run_id)
        executions.add(e.execution_id)
        chunks.update(history_ids_of(e.run_id, e.event_number))
    return runs, executions, chunks


def project(events: Iterable[Event], docs: ReadModelDocs, new_heads: bool = True) -> ReadModelDocs:
    """Fold `events`, in order, onto `docs` (which must hold every existing document the
    events touch, see `ids_touched`: for the last event of a block that includes the
    block's chunks and the block itself); records what changed. Pure apart from `docs`.

    `new_heads` False: no run gets a head (chunk 0 goes to its document, as before heads
    existed: settings `projector_history_heads`); a row that has one keeps it, folded as
    with True."""
    for event in events:
        before_run = before = docs.runs.get(event.run_id)
        run = apply_to_run(before, event)
        if run is not None and run is not before:
            docs.runs[event.run_id] = run
            docs.changed_runs.add(event.run_id)
        before = docs.executions.get(event.execution_id)
        pointer = apply_to_execution(before, event)
        if pointer is not None and pointer is not before:
            docs.executions[event.execution_id] = pointer
            docs.changed_executions.add(event.execution_id)
        chunk_id = history_chunk_id(event.run_id, event.event_number)
        if _in_head(event, before_run, run, chunk_id, docs, new_heads):
            _apply_to_head(event, chunk_id, docs)
        else:
            before = docs.history.get(chunk_id)
            chunk = apply_to_history(before, event)
            if chunk is not before:
                docs.history[chunk_id] = chunk
                docs.changed_history.add(chunk_id)
        if event.event_number % HISTORY_BLOCK == 0:
            # The block's last event: seal the block if it is not already (after a crash
            # between its chunks' write and its own, the re-delivered event seals it).
            block = history_block_of(event.event_number)
            block_id = history_block_key(event.run_id, block)
            if block_id not in docs.history:
                chunks = docs.history
                if block == 0:  # chunk 0 may be the row's head (which wins)
                    chunks = {**docs.history, **head_docs(docs.runs.get(event.run_id))}
                sealed = seal_block(event.run_id, block, chunks)
                if sealed is not None:
                    docs.history[block_id] = sealed
                    docs.changed_history.add(block_id)
    return docs


def _in_head(
    event: Event,
    before: Document | None,
    run: Document | None,
    chunk_id: str,
    docs: ReadModelDocs,
    new_heads: bool,
) -> bool:
    """Whether `event` goes to its run row's head: the row has one, or (`new_heads`) this
    is the run's first event and it opened the row (unless chunk 0 is a document already:
    a stale one under a row not written yet keeps being used, as the code before heads
    would)."""
    if run is None or event.event_number > HISTORY_CHUNK:
        return False
    if HISTORY_HEAD in run:
        return True
    return new_heads and event.event_number == 1 and before is None and chunk_id not in docs.history


def _apply_to_head(event: Event, chunk_id: str, docs: ReadModelDocs) -> None:
    """Add `event` to its run row's head; past HEAD_MAX_TEXT_CHARS, move the head out of
    the row into chunk 0's document (with the events of a chunk 0 document already there:
    a crash can leave one written before the row that drops the head)."""
    run = docs.runs[event.run_id]
    head = head_chunk(run)
    chunk = apply_to_history(head, event)
    if chunk is head:
        return  # already there
    if chunk_text_chars(chunk) > HEAD_MAX_TEXT_CHARS:
        docs.history[chunk_id] = merged_chunk(chunk, docs.history.get(chunk_id))
        docs.changed_history.add(chunk_id)
        run = {k: v for k, v in run.items() if k != HISTORY_HEAD}
    else:
        run = {**run, HISTORY_HEAD: head_of(chunk)}
    docs.runs[event.run_id] = run
    docs.changed_runs.add(event.run_id)
