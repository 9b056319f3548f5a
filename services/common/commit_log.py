"""The commit log: how every reader of the event store's commits reads them (the port),
and how a commit is stored as a MongoDB document (shared by the engine's event store,
which appends, and `MongoCommitLog`, which reads).

Readers: the projector (gaps and rebuilds), the API (point reads folding the commits the
projector has not applied yet, SSE history, the events list, traces). Adapters:
`services/common/mongo_commit_log.py` and `services/common/memory_commit_log.py`, both
held to `tests/contract/test_commit_log.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from itertools import islice
from typing import Any, Protocol

from pydantic_core import to_json
from pymongo.asynchronous.collection import AsyncCollection

from schemas.commits import Commit, commit_id
from schemas.events import EventType, event_id_for

Document = dict[str, Any]

COMMITS = "commits"
"""The commits, and beside them one run locator per run (`run_locators` below)."""
LEGACY_RUN_LOCATORS = "run_locators"
"""Where engines before run locators moved into `commits` wrote them (same shape with
`_id` = run_id and `execution_id`); `locate_run` still reads it after a miss."""


class CommitLog(Protocol):
    """Read access to the stored commits. Every read but `scan` is by `_id`."""

    async def get(self, execution_id: str, seq: int) -> Commit | None:
        """One commit by its position; None if it is not stored."""

    async def read_after(
        self, execution_id: str, after_seq: int, limit: int | None = None
    ) -> list[Commit]:
        """The execution's commits after `after_seq`, in seq order, up to the first seq
        that is not stored (at most `limit` of them)."""

    def scan(self) -> AsyncIterator[Commit]:
        """Every commit in `_id` order (`{execution_id}:{seq:012d}`): each execution's
        commits in seq order (for a rebuild)."""
        ...  # pragma: no cover

    async def count(self) -> int:
        """About how many commits `scan` yields (for progress output; a store may count
        its run locators too)."""

    async def locate_run(self, run_id: str) -> str | None:
        """The execution a run belongs to, once the engine has opened (or is opening) it."""


async def newest_commit(
    get: Callable[[str, int], Awaitable[Commit | None]], execution_id: str
) -> Commit | None:
    """An execution's newest stored commit, by point reads only (`get`, e.g.
    `CommitLog.get`): ~2 log2(n) reads for n commits, none of them a sort or a scan."""
    newest = await get(execution_id, 1)
    if newest is None:
        return None
    # Gallop: double the probe until a seq is missing; the last commit lies between.
    low, high = 1, 2
    while (found := await get(execution_id, high)) is not None:
        newest, low, high = found, high, high * 2
    # Binary search in (low, high): low exists, high does not.
    while high - low > 1:
        middle = (low + high) // 2
        found = await get(execution_id, middle)
        if found is None:
            high = middle
        else:
            newest, low = found, middle
    return newest


def run_locator_id(run_id: str) -> str:
    """A run locator's `_id` in `commits`. A commit's `_id` ends in `:` and 12 digits, so
    the two never collide."""
    return f"{run_id}:run"


def run_locators(commits: Iterable[Commit]) -> list[Document]:
    """One locator per run these commits open: `{_id, command_id, run_of}`, so that a run
    the projector has not written yet is found by one `_id` read, and an unknown run id is
    a miss, not a scan.

    Locators live in `commits` so that the engine writes them in the same insert request
    as the commits (ahead of them: a locator whose commit never lands names a run nobody
    knows, which reads as "not found" anyway). Their `command_id` is a sub-document, which
    never equals a command's id (a string) in the collection's unique index, and they have
    none of a commit's other fields (no `execution_id`, `seq`, `body`): queries on those
    never see them, and `scan` skips them.
    """
    found: dict[str, Document] = {}
    for commit in commits:
        for event in commit.events:
            if event.type is EventType.WORKFLOW_EXECUTION_STARTED and event.run_id not in found:
                found[event.run_id] = {
                    "_id": run_locator_id(event.run_id),
                    "command_id": {"run": event.run_id},
                    "run_of": event.execution_id,
                }
    return list(found.values())


def is_commit_doc(doc: Document) -> bool:
    """Whether a document of `commits` is a commit (not a run locator)."""
    return "body" in doc


_TOP_LEVEL = ("execution_id", "seq", "command_id", "command_type", "run_id")
"""The commit's fields a document of the whole layout (`compact=False`, and the layout
of 2026-12-06's first compact bodies) holds at its top level."""
_FROM_ID = ("execution_id", "seq", "command_id")
"""What the lean body leaves out: `_id` says the execution and the seq, and the command
id is a top-level field (for its unique index)."""
_STATE_HEAD = ("execution_id", "seq", "run_id")
"""The state snapshot's first fields (`ExecutionState`'s order): the commit's own."""
_FROM_COMMIT = ("execution_id", "seq", "run_id", "command_id")
"""An event's fields that, when equal to the commit's, the body leaves out."""
_FROM_STATE = ("workflow_name", "root_execution_id")
"""An event's fields that, when equal to the state snapshot's, the body leaves out."""
_WHOLE_BODY = '{"execution_id"'
"""How a body written whole starts (before the compact body, and for commits whose state
is not an engine's snapshot)."""


def commit_to_doc(commit: Commit, compact: bool = True) -> Document:
    """A commit as stored: `_id` (`{execution_id}:{seq:012d}`), `command_id` (its unique
    index makes appends idempotent), `committed_at` (a BSON date, for operators' queries)
    and the rest of the commit as JSON text in `body`.

    The body is opaque to the database on purpose (as event stores keep event payloads):
    nothing queries inside it, and a document of a few flat fields is several times
    cheaper to insert and read than the nested one (FerretDB converts and indexes every
    nested field; docs/engine-performance.md). FerretDB's cost also grows with each
    top-level field (its SQLite JSON carries a type schema per field): the execution and
    the seq are read from `_id`, and the command type and run id are in the body (a store
    round 8-23% faster, docs/engine-performance.md, "Seventh session").

    The body leaves out what the document says already (`_FROM_ID`), fields that are None
    (they read back as their default), an empty `rejected`, and what `commit_from_doc`
    derives back: the state's and each event's copies of the commit's ids, an event's
    `event_id`, and an event's workflow name and root execution when the state has the
    same. `compact` False writes the layout every version reads (a rolling upgrade): the
    ids at the top level and the whole commit in the body.
    """
    if not compact:
        return {
            "_id": commit.doc_id,
            "execution_id": commit.execution_id,
            "seq": commit.seq,
            "command_id": commit.command_id,
            "command_type": commit.command_type,
            "run_id": commit.run_id,
            "committed_at": commit.committed_at,
            "body": commit.model_dump_json(exclude_none=True),
        }
    return {
        "_id": commit.doc_id,
        "command_id": commit.command_id,
        "committed_at": commit.committed_at,
        "body": _body(commit),
    }


def commit_filter(execution_id: str) -> Document:
    """A query for one execution's commits (sort by `_id` for seq order): `_id` is all a
    document says of its execution."""
    return {"_id": {"$regex": f"^{re.escape(execution_id)}:[0-9]{{12}}$"}}


def _body(commit: Commit) -> str:
    if "execution_id" not in commit.state:
        # Not an engine's snapshot (those always hold it): `commit_from_doc` would take
        # the absent ids for left out. The whole commit, as engines wrote it before.
        return commit.model_dump_json(exclude_none=True)
    left_out = _derived(commit)
    if left_out is _COMMON[(bool(commit.rejected), "state" in left_out)]:
        return _common_body(commit, "state" in left_out)
    return commit.model_dump_json(exclude_none=True, exclude=left_out)


def _common_body(commit: Commit, state_head: bool) -> str:
    """`commit.model_dump_json(exclude_none=True, exclude=_COMMON[…])`, the same bytes,
    from plain dicts in one `to_json` call: pydantic's nested `exclude` (`{"__all__": …}`
    over the events, a set on the state) cost more than serialising the whole commit,
    and the engine's commits almost all take this path (docs/engine-performance.md,
    "Fourteenth session").

    Each dict holds a model's field values in its field order (a model's `__dict__` is
    its fields' values, in declaration order), None values left out, so `to_json` (with
    `exclude_none`, which reaches nested models and not a dict's values, as in the
    commit's dump) writes what the commit's serializer writes: strings, numbers, the
    datetime, nested models by their own serializers, the state as a `dict[str, Any]`
    field. An event's `type` goes as its value (what its field writes; inferring the
    enum costs more). tests/unit/test_commit_layout.py compares the two on the engine's
    corpus."""
    events = []
    for event in commit.events:
        fields = {
            k: v for k, v in event.__dict__.items() if v is not None and k not in _ALL_OF_EVENT
        }
        fields["type"] = event.type.value
        events.append(fields)
    body: dict[str, Any] = {
        "command_type": commit.command_type,
        "run_id": commit.run_id,
        "events": events,
        "committed_at": commit.committed_at,
    }
    if commit.source is not None:
        body["source"] = commit.source
    if commit.rejected:
        body["rejected"] = commit.rejected
    # The state's first three keys are `_STATE_HEAD` when `state_head` (`_derived` checked).
    body["state"] = dict(islice(commit.state.items(), 3, None)) if state_head else commit.state
    # Non-finite floats as pydantic's dump writes them (`ser_json_inf_nan="null"`).
    return to_json(body, exclude_none=True, inf_nan_mode="null").decode()


_ALL_OF_EVENT = frozenset({*_FROM_COMMIT, *_FROM_STATE, "event_id"})


def _left_out(rejected: bool, state_head: bool, events: Any) -> dict[str, Any]:
    left_out: dict[str, Any] = dict.fromkeys(_FROM_ID, True)
    if not rejected:
        left_out["rejected"] = True
    if state_head:
        left_out["state"] = frozenset(_STATE_HEAD)
    if events is not None:
        left_out["events"] = events
    return left_out


# The engine's commits almost always leave out everything: one of these (no allocation).
_COMMON: dict[tuple[bool, bool], dict[str, Any]] = {
    (rejected, head): _left_out(rejected, head, {"__all__": _ALL_OF_EVENT})
    for rejected in (False, True)
    for head in (False, True)
}


def _derived(commit: Commit) -> dict[str, Any]:
    """What the body of `commit` leaves out (pydantic's `exclude`)."""
    state = commit.state
    execution_id, seq, run_id = commit.execution_id, commit.seq, commit.run_id
    keys = iter(state)
    state_head = (
        (next(keys, None), next(keys, None), next(keys, None)) == _STATE_HEAD
        and state["execution_id"] == execution_id
        and state["seq"] == seq
        and state["run_id"] == run_id
    )
    ids = (execution_id, seq, run_id, commit.command_id)
    named = (state.get("workflow_name"), state.get("root_execution_id"))
    events: dict[int, frozenset[str] | set[str]] = {}
    every = True
    for position, event in enumerate(commit.events):
        if (
            (event.execution_id, event.seq, event.run_id, event.command_id) == ids
            and (event.workflow_name, event.root_execution_id) == named
            and event.event_id == f"{execution_id}:{seq}:{event.index}"
        ):
            events[position] = _ALL_OF_EVENT
            continue
        every = False
        fields = {name for name in _FROM_COMMIT if getattr(event, name) == getattr(commit, name)}
        fields.update(name for name in _FROM_STATE if getattr(event, name) == state.get(name))
        if event.event_id == event_id_for(event.execution_id, event.seq, event.index):
            fields.add("event_id")
        if fields:
            events[position] = fields
    if every:
        return _COMMON[(bool(commit.rejected), state_head)]
    return _left_out(bool(commit.rejected), state_head, events or None)


def commit_from_doc(doc: Document) -> Commit:
    """The commit a `commit_to_doc` document holds, in any layout engines wrote: lean
    (the ids in `_id`), compact with the ids at the top level (2026-12-06, before the
    lean one), or the whole commit in the body (before that, and `compact=False`)."""
    body: str = doc["body"]
    if body.startswith(_WHOLE_BODY):
        return Commit.model_validate_json(body)
    data: dict[str, Any] = json.loads(body)
    if "execution_id" in doc:
        for name in _TOP_LEVEL:
            data[name] = doc[name]
    else:
        execution_id, _, seq = str(doc["_id"]).rpartition(":")
        data["execution_id"], data["seq"] = execution_id, int(seq)
        data["command_id"] = doc["command_id"]
    state = data["state"]
    if "execution_id" not in state:
        # Left out (`_body` writes a state without them whole): back in front, as the
        # snapshot had them (readers may dump it again).
        data["state"] = state = {name: data[name] for name in _STATE_HEAD} | state
    # Every field restored here is required in an event: one absent was left out.
    for event in data["events"]:
        for name in _FROM_COMMIT:
            if name not in event:
                event[name] = data[name]
        for name in _FROM_STATE:
            if name not in event:
                event[name] = state[name]
        if "event_id" not in event:
            event["event_id"] = event_id_for(event["execution_id"], event["seq"], event["index"])
    return Commit.model_validate(data)


async def read_commit(
    commits: AsyncCollection[Document], execution_id: str, seq: int
) -> Commit | None:
    """One commit by `_id` from the commits collection (`MongoCommitLog.get`; the engine's
    event store reads through it too)."""
    doc = await commits.find_one({"_id": commit_id(execution_id, seq)})
    return commit_from_doc(doc) if doc else None
