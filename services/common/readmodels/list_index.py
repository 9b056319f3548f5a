"""The run list in memory: a derived view of `runs` that answers `list_runs` without the
store (pure, no I/O; `services/api/list_index_feed.py` loads and feeds it).

Why: FerretDB 1.x on SQLite pushes down no filter and no sort, so every list page there is
a scan and an in-memory sort of the whole collection (seconds at 10^4 runs, see
docs/local-store.md). Here each page is a walk of a sorted key list from the cursor that
stops at the page size.

What it holds: per run only what lists return (LIST_FIELDS) and what filters test, in a
slotted row with repeated strings shared. Per sort field (start_time, end_time) a list of
keys `(milliseconds, run_id)` kept sorted, for all runs and for each value of each equality
dimension (workflow, root execution, deployment, user, status, workflow tag, and the
`set:`/`null:`/`eq:` search terms). A page walks the smallest list the filter pins (a union
of lists for several statuses), from the cursor or the sort field's own time bound, and
tests each row against the whole filter (`_predicate`, which means what
`memory_store.accepts` means: `tests/contract/test_read_models.py` holds the index to the
same pages as MongoDB and the memory adapter).

It changes by the projector's own fold: `apply` runs `projection.apply_to_run` on the row
and keeps what the fold returns, so a re-delivered or older event changes nothing
(`position` guard) and the rows equal the projector's. (A new run's row is made straight
from its STARTED event, as `_row(apply_to_run(None, event))` would make it: `_started_row`.)
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from schemas.events import STATUS_AFTER, Event, EventType, StartedAttributes
from services.common.readmodels.projection import apply_to_run
from services.common.readmodels.reader import LIST_FIELDS, ReadModelReader
from services.common.readmodels.run_filter import Cursor, RunFilter, aware
from services.common.readmodels.search_keys import search_terms

Document = dict[str, Any]
Key = tuple[int, str]
"""(sort field in ms since the epoch, or _NULL for an open run's end time; run_id). In the
end-time lists an open run's key is stored as (_OPEN, run_id) (see `_walk_ends`)."""
_Keys = tuple[list[Key], list[Key]]
"""A dimension value's runs: their keys sorted, by start time and by end time."""
_Entry = _Keys | list[str] | str
"""A dimension value's runs: _Keys, or (at most _SMALL of them) their ids, or (one) its id."""
Bound = tuple[Any, ...]
"""A key or a prefix of one (`(ms,)` sorts before every key at ms)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NULL = -(2**63)
"""An open run's end time: below every date, as MongoDB orders null."""
_OPEN = 2**63
"""An open run's end time as the end-time lists store it: above every date, so the open
runs are their tail. A run opens and closes at the tail (a closed run's end is nearly
always the newest), where an insertion or removal moves few keys; at the head, as lists
order them, each moved every key of the list: the fold's CPU grew with the index (40-41
us per one-activity workflow at 1,000 runs, 89-92 us at 40,000; now 34-36 and 45-46 us,
bench/list_index_fold.py). `_walk_ends` walks them in null-first order."""
_AFTER_ANY_ID = "\U0010ffff"
"""Sorts after every run id: (ms, _AFTER_ANY_ID) lies between ms and ms + 1."""
_ALL = ("", "")
"""The dimension every run is in."""
_SMALL = 8
"""A dimension value with at most this many runs (a root execution, an order number) keeps
their ids only; its keys are sorted when a page asks (two key lists each would cost more)."""
_REJOIN_AFTER = 1000
"""Changed texts a substring scan tests one by one before it joins all texts again."""
_WALK_AT_MOST = 4096
"""A walk of this many keys is cheaper than scanning every run's text for a substring."""
_SORT_AT_MOST = 20_000
"""More runs than this holding a substring are dense enough to find by walking."""
_RESULTS_CHARS = 8_000_000
"""The results of recently completed runs kept for point reads, in characters of JSON
(oldest dropped first); a result longer than _RESULT_CHARS is never kept."""
_RESULT_CHARS = 4096

INDEX_FIELDS = (
    *LIST_FIELDS,
    "display_name",
    "internal",
    "search_terms",
    "workflow_tags",
    "position",
)
"""The fields of a run document the index keeps (a snapshot loads only these)."""


class _Row:
    """One run, compactly: LIST_FIELDS, what filters test, and the fold's position."""

    __slots__ = (
        "attempt",
        "deployment_name",
        "end",
        "execution_id",
        "haystack",
        "internal",
        "keys",
        "parent_execution_id",
        "position",
        "root_execution_id",
        "run_id",
        "start",
        "status",
        "tags",
        "terms",
        "total_duration_ms",
        "user_id",
        "workflow_name",
    )

    run_id: str
    execution_id: str
    workflow_name: str
    root_execution_id: str
    parent_execution_id: str | None
    deployment_name: str | None
    user_id: str | None
    status: str
    start: int
    end: int
    total_duration_ms: int | None
    attempt: Any
    internal: bool
    terms: tuple[str, ...]
    tags: tuple[str, ...]
    haystack: tuple[str, str, str]
    """workflow_name, display_name, execution_id case-folded as `search` compares them."""
    position: tuple[int, int]
    keys: tuple[Key, Key]

    def key(self, sort_field: int) -> Key:
        return self.keys[sort_field]

    def set_keys(self) -> None:
        """Its keys in the sorted lists, made once: every list holds these same tuples
        (an open run's end as _OPEN)."""
        end = _OPEN if self.end == _NULL else self.end
        self.keys = ((self.start, self.run_id), (end, self.run_id))

    def dimensions(self) -> list[tuple[str, Any]]:
        """The (dimension, value) lists this run is in. (A list, not a generator: a run's
        fold walks them twice, one call each instead of a resumption per dimension.)"""
        dims: list[tuple[str, Any]] = [
            _ALL,
            ("workflow_name", self.workflow_name),
            ("root_execution_id", self.root_execution_id),
        ]
        if self.deployment_name is not None:
            dims.append(("deployment_name", self.deployment_name))
        if self.user_id is not None:
            dims.append(("user_id", self.user_id))
        dims.append(("status", self.status))
        for tag in self.tags:
            dims.append(("tag", tag))
        for term in self.terms:
            if not term.startswith("fold:"):  # similar matches test the set: term's runs
                dims.append(("term", term))
        return dims

    def texts(self) -> Iterator[tuple[tuple[str, str], str]]:
        """The texts substring filters scan: ("search", "") → the `search` fields joined
        (a needle in one field is in the joined text); ("fold", key) → the key's folded
        term (a similar value of the key is in it)."""
        yield ("search", ""), "\x00".join(self.haystack)
        for term in self.terms:
            if term.startswith("fold:"):
                yield ("fold", term[5 : term.index("=")]), term

    def document(self) -> Document:
        """The list row (LIST_FIELDS), as the store returns it."""
        return {
            "_id": self.run_id,
            "run_id": self.run_id,
            "execution_id": self.execution_id,
            "workflow_name": self.workflow_name,
            "root_execution_id": self.root_execution_id,
            "parent_execution_id": self.parent_execution_id,
            "deployment_name": self.deployment_name,
            "user_id": self.user_id,
            "status": self.status,
            "start_time": from_ms(self.start),
            "end_time": None if self.end == _NULL else from_ms(self.end),
            "total_duration_ms": self.total_duration_ms,
            "attempt": self.attempt,
        }

    def point_document(self) -> Document:
        """The run as point reads show it (docs/read-models.md, "Read guarantees"): the
        list row, its search keys (decoded from the terms, which hold them exactly), and
        the position of the newest event it reflects. No `result_json` (see
        `RunListIndex.run_document`)."""
        doc = self.document()
        doc["search_keys"] = search_keys_from_terms(self.terms)
        doc["position"] = list(self.position)
        doc["seq"] = self.position[0]
        return doc

    def fold_state(self) -> Document:
        """What `apply_to_run` reads and changes for an event after the start."""
        return {
            "position": list(self.position),
            "start_time": from_ms(self.start),
            "status": self.status,
            "end_time": None if self.end == _NULL else from_ms(self.end),
            "total_duration_ms": self.total_duration_ms,
            "attempt": self.attempt,
        }


class RunListIndex:
    """The run list of one process. `ready` says whether it reflects the store (set by
    whoever loads it; until then readers ask the store)."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._lists: dict[tuple[str, Any], _Entry] = {}
        self._texts: dict[tuple[str, str], _TextScan] = {}
        self._shared: dict[str, str] = {}
        self._results: OrderedDict[str, str] = OrderedDict()
        """run_id -> result_json of runs whose completion the feed folded (bounded)."""
        self._results_chars = 0
        self._latest: dict[str, str] = {}
        """execution_id -> its latest run's id (the run with the newest position: only an
        execution's latest run gets events, and it opens after every event of the others)."""
        self._loading = False
        self.ready = False

    def __len__(self) -> int:
        return len(self._rows)

    # --- changes --------------------------------------------------------------------

    def put(self, doc: Document, *, only_if_newer: bool = False) -> None:
        """Hold run document `doc` (the store's, or one the fold made) in place of the
        run's row; with `only_if_newer`, only if its position is after the row's."""
        old = self._rows.get(doc["_id"])
        if old is not None and only_if_newer and _position(doc) <= old.position:
            return
        self._replace(old, self._row(doc))

    def apply(self, event: Event) -> None:
        """Fold one event into its run's row, as the projector folds it into the run
        document (an event at or before the row's position changes nothing)."""
        old = self._rows.get(event.run_id)
        if event.type is EventType.WORKFLOW_EXECUTION_STARTED:
            if old is None:
                # A new run (every start): its row straight from the event, what
                # `_row(apply_to_run(None, event))` makes without the document between
                # (tests/unit/test_list_index.py holds the two equal).
                self._insert(self._started_row(event))
                return
            doc = apply_to_run(old.fold_state(), event)
            if doc is not None and (old is None or doc["position"] != list(old.position)):
                self._replace(old, self._row(doc))
            return
        if old is None:
            return  # nothing to show before the run's start (see apply_to_run)
        if event.type not in STATUS_AFTER:
            # Only the position moves (activities, timers, signals, markers … : most
            # events): apply_to_run changes nothing a list sorts, filters or shows, so the
            # row moves in place instead of being folded, copied and relinked.
            # (tests/unit/test_list_index.py holds apply_to_run to that.)
            at = (event.seq, event.index)
            if at > old.position:
                old.position = at
                self._note_latest(old)
            return
        state = old.fold_state()
        doc = apply_to_run(state, event)
        if doc is None or doc is state:
            return
        new = _copy(old)
        new.status = self._share(doc["status"])
        new.end = _NULL if doc["end_time"] is None else to_ms(doc["end_time"])
        new.total_duration_ms = doc["total_duration_ms"]
        new.attempt = doc["attempt"]
        new.position = _position(doc)
        if new.end != old.end:
            new.set_keys()
        self._replace(old, new)
        if doc.get("result_json") is not None:
            self._keep_result(event.run_id, doc["result_json"])

    def _keep_result(self, run_id: str, result_json: str) -> None:
        """Keep a completed run's result for point reads (a run completes once: nothing
        follows its terminal event), within _RESULTS_CHARS."""
        if len(result_json) > _RESULT_CHARS:
            return
        kept = self._results.pop(run_id, None)
        if kept is not None:
            self._results_chars -= len(kept)
        self._results[run_id] = result_json
        self._results_chars += len(result_json)
        while self._results_chars > _RESULTS_CHARS:
            _, dropped = self._results.popitem(last=False)
            self._results_chars -= len(dropped)

    def seq_of(self, run_id: str) -> int | None:
        """The `seq` of the newest event the run's row reflects; None for an unknown run."""
        row = self._rows.get(run_id)
        return None if row is None else row.position[0]

    def run_document(self, run_id: str) -> Document | None:
        """The run's `point_document`, with its `result_json` if it completed and the result
        is kept; None for a run the index does not hold."""
        row = self._rows.get(run_id)
        return None if row is None else self._point_document(row)

    def latest_run_document(self, execution_id: str) -> Document | None:
        """`run_document` of the execution's latest run the index holds; None for an
        execution it does not hold."""
        run_id = self._latest.get(execution_id)
        return None if run_id is None else self._point_document(self._rows[run_id])

    def _point_document(self, row: _Row) -> Document:
        doc = row.point_document()
        result = self._results.get(row.run_id) if row.status == "COMPLETED" else None
        if result is not None:
            doc["result_json"] = result
        return doc

    def gap_before(self, event: Event) -> int | None:
        """If the run's row lacks events before `event` (a lost or reordered record), the
        seq after which its execution's commits hold them; None if there is no gap.

        A run's events have consecutive seqs (only the latest run of an execution gets
        events), and a run's first event is its start or the reset that opens it."""
        seq = self.seq_of(event.run_id)
        if seq is None:
            opening = event.type in (
                EventType.WORKFLOW_EXECUTION_STARTED,
                EventType.WORKFLOW_RUN_RESET,
            )
            return None if opening else 0
        return seq if event.seq > seq + 1 else None

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Many `put`s at once (a snapshot): keys are appended and each list is sorted
        once at the end, instead of an insertion into sorted lists per run."""
        self._loading = True
        try:
            yield
        finally:
            self._loading = False
            for entry in self._lists.values():
                if isinstance(entry, tuple):
                    entry[0].sort()
                    entry[1].sort()

    def clear(self) -> None:
        self._rows.clear()
        self._lists.clear()
        self._texts.clear()
        self._shared.clear()
        self._latest.clear()
        self._results.clear()
        self._results_chars = 0
        self.ready = False

    def _share(self, value: str) -> str:
        return self._shared.setdefault(value, value)

    def _row(self, doc: Document) -> _Row:
        s = self._share
        row = _Row()
        row.run_id = doc["_id"]
        row.execution_id = doc["execution_id"]
        row.workflow_name = _shared_or_none(s, doc.get("workflow_name"))
        root = doc["root_execution_id"]
        row.root_execution_id = row.execution_id if root == row.execution_id else root
        row.parent_execution_id = doc.get("parent_execution_id")
        row.deployment_name = _shared_or_none(s, doc.get("deployment_name"))
        row.user_id = _shared_or_none(s, doc.get("user_id"))
        row.status = s(doc["status"])
        row.start = to_ms(doc["start_time"])
        end = doc.get("end_time")
        row.end = _NULL if end is None else to_ms(end)
        row.total_duration_ms = doc.get("total_duration_ms")
        row.attempt = doc.get("attempt")
        row.internal = doc.get("internal") is True
        row.terms = tuple(s(t) for t in doc.get("search_terms") or ())
        row.tags = tuple(s(t) for t in doc.get("workflow_tags") or ())
        row.haystack = (
            s(_folded(row.workflow_name)),
            _folded(doc.get("display_name")),
            _folded(row.execution_id),
        )
        row.position = _position(doc)
        row.set_keys()
        return row

    def _started_row(self, event: Event) -> _Row:
        """The row of a run `event` (its WORKFLOW_EXECUTION_STARTED) opens, as `_row` makes
        it of the document `apply_to_run(None, event)` folds, field by field."""
        s = self._share
        a = cast(StartedAttributes, event.attributes)
        row = _Row()
        row.run_id = event.run_id
        row.execution_id = execution_id = event.execution_id
        row.workflow_name = _shared_or_none(s, event.workflow_name)
        root = event.root_execution_id
        row.root_execution_id = execution_id if root == execution_id else root
        row.parent_execution_id = event.parent_execution_id
        row.deployment_name = _shared_or_none(s, a.deployment_name)
        row.user_id = _shared_or_none(s, a.user_id)
        row.status = s("RUNNING")
        # `to_ms(read_model_time(ns))`: the time truncated to the millisecond (floored,
        # as the datetime's microsecond field is), in integers.
        row.start = event.timestamp_ns // 1_000_000
        row.end = _NULL
        row.total_duration_ms = None
        row.attempt = a.attempt
        row.internal = a.internal is True
        row.terms = tuple(s(t) for t in search_terms(a.search_keys)) if a.search_keys else ()
        row.tags = tuple(s(t) for t in sorted(set(a.workflow_tags))) if a.workflow_tags else ()
        row.haystack = (
            s(_folded(row.workflow_name)),
            _folded(a.display_name),
            _folded(execution_id),
        )
        row.position = (event.seq, event.index)
        row.set_keys()
        return row

    def _insert(self, new: _Row) -> None:
        """`_replace(None, new)` for a run the index does not hold yet."""
        add: Callable[[list[Key], Key], None] = _append if self._loading else insort
        for dim in dict.fromkeys(new.dimensions()):  # (as `_replace`: each list once)
            self._link(dim, new, add)
        texts = self._texts
        for dim, text in new.texts():
            scan = texts.get(dim)
            if scan is None:
                scan = texts[dim] = _TextScan()
            scan.set(new.run_id, text)
        self._rows[new.run_id] = new
        self._note_latest(new)

    def _replace(self, old: _Row | None, new: _Row) -> None:
        before = dict.fromkeys(old.dimensions()) if old is not None else {}
        after = dict.fromkeys(new.dimensions())
        add: Callable[[list[Key], Key], None] = _append if self._loading else insort
        remove: Callable[[list[Key], Key], None] = _unsorted_remove if self._loading else _remove
        for dim in before:
            if dim not in after:
                self._unlink(dim, old, remove)  # type: ignore[arg-type]
        for dim in after:
            if dim not in before:
                self._link(dim, new, add)
            elif old is not None and (old.start != new.start or old.end != new.end):
                entry = self._lists[dim]
                if isinstance(entry, tuple):  # (a small dimension holds run ids only)
                    for field in (0, 1):
                        old_key, new_key = old.keys[field], new.keys[field]
                        if old_key != new_key:
                            remove(entry[field], old_key)
                            add(entry[field], new_key)
        if old is None or old.haystack is not new.haystack or old.terms is not new.terms:
            if old is not None:
                for dim, _ in old.texts():
                    self._texts[dim].drop(old.run_id)
            for dim, text in new.texts():
                scan = self._texts.get(dim)
                if scan is None:
                    scan = self._texts[dim] = _TextScan()
                scan.set(new.run_id, text)
        self._rows[new.run_id] = new
        self._note_latest(new)

    def _note_latest(self, row: _Row) -> None:
        """`row`'s run is its execution's latest if its position is the newest."""
        latest = self._latest.get(row.execution_id)
        if latest is None or latest == row.run_id or self._rows[latest].position < row.position:
            self._latest[row.execution_id] = row.run_id

    def _link(self, dim: tuple[str, Any], row: _Row, add: Callable[[list[Key], Key], None]) -> None:
        entry = self._lists.get(dim)
        if entry is None:
            self._lists[dim] = row.run_id
        elif isinstance(entry, str):
            self._lists[dim] = [entry, row.run_id]
        elif isinstance(entry, list):
            entry.append(row.run_id)
            if len(entry) > _SMALL:
                rows = [row if i == row.run_id else self._rows[i] for i in entry]
                self._lists[dim] = (sorted(r.key(0) for r in rows), sorted(r.key(1) for r in rows))
        else:
            add(entry[0], row.keys[0])
            add(entry[1], row.keys[1])

    def _unlink(
        self, dim: tuple[str, Any], row: _Row, remove: Callable[[list[Key], Key], None]
    ) -> None:
        entry = self._lists[dim]
        if isinstance(entry, str):
            empty = True
        elif isinstance(entry, list):
            entry.remove(row.run_id)
            empty = not entry
        else:
            remove(entry[0], row.keys[0])
            remove(entry[1], row.keys[1])
            empty = not entry[0]
        if empty:
            del self._lists[dim]

    def _keys(self, entry: _Entry, field: int) -> list[Key]:
        """The sorted keys of a dimension's runs for one sort field."""
        if isinstance(entry, tuple):
            return entry[field]
        if isinstance(entry, str):
            return [self._rows[entry].key(field)]
        return sorted(self._rows[i].key(field) for i in entry)

    # --- the list -------------------------------------------------------------------

    def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        """ReadModelReader.list_runs over the index (BadPageToken for a cursor that fits
        no segment of the sort)."""
        flt.segments_from(after)
        if limit <= 0:
            return []
        field = 0 if flt.sort_by == "start_time" else 1
        desc = flt.order == "desc"
        low, high = _sort_field_bounds(flt)
        lists = self._candidates(flt, field)
        narrowed = self._text_matches(flt, field, sum(len(keys) for keys in lists))
        if narrowed is not None:
            lists = [narrowed]
        mark = None if after is None else _cursor_key(after)
        walk = _walk if field == 0 else _walk_ends
        walks = [walk(lst, low, high, mark, desc) for lst in lists]
        keys: Iterable[Key] = walks[0] if len(walks) == 1 else heapq.merge(*walks, reverse=desc)
        accepts = _predicate(flt)
        out: list[Document] = []
        for _, run_id in keys:
            row = self._rows[run_id]
            if accepts(row):
                out.append(row.document())
                if len(out) >= limit:
                    break
        return out

    def _candidates(self, flt: RunFilter, field: int) -> list[list[Key]]:
        """The sorted lists whose union holds every run `flt` accepts: the smallest of
        the ones the filter pins (all runs if it pins none)."""
        choices: list[list[list[Key]]] = []
        pinned: list[tuple[str, Any]] = list(flt.equality().items())
        pinned += [("tag", t) for t in flt.workflow_tags]
        pinned += [("term", sk.index_term()) for sk in flt.search_keys]
        for dim in pinned:
            entry = self._lists.get(dim)
            if entry is None:
                return []
            choices.append([self._keys(entry, field)])
        statuses = sorted(set(flt.statuses))
        if len(statuses) > 1:
            found = [e for s in statuses if (e := self._lists.get(("status", s))) is not None]
            choices.append([self._keys(e, field) for e in found])
        if not choices:
            everything = self._lists.get(_ALL)
            return [self._keys(everything, field)] if everything else []
        return min(choices, key=lambda lists: sum(len(keys) for keys in lists))

    def _text_matches(self, flt: RunFilter, field: int, walk: int) -> list[Key] | None:
        """For a substring filter (`search`, a similar search key) when the walk would be
        long: the sorted keys of the runs whose text holds the substring (a superset of
        what the filter accepts), if they are fewer than the walk and few enough to sort;
        else None (the walk finds dense matches soon)."""
        if walk <= _WALK_AT_MOST:
            return None
        scans: list[tuple[tuple[str, str], str]] = []
        if flt.search:
            scans.append((("search", ""), flt.search.lower()))
        for sk in flt.search_keys:
            if sk.match == "similar" and sk.value is not None:
                scans.append((("fold", sk.key), sk.value.casefold()))
        best: list[str] | None = None
        for dim, needle in scans:
            scan = self._texts.get(dim)
            found = scan.find(needle, min(walk, _SORT_AT_MOST)) if scan is not None else []
            if found is not None and (best is None or len(found) < len(best)):
                best = found
        if best is None or len(best) >= walk:
            return None
        rows = self._rows
        return sorted(rows[run_id].key(field) for run_id in best)


class _TextScan:
    """The texts of one substring dimension by run id, searched in C: they are also kept
    joined in one string (rebuilt once enough of them changed; the changed ones are tested
    one by one meanwhile), which `str.find` scans far faster than a Python loop tests
    100,000 strings."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self._joined = ""
        self._ids: list[str] = []
        self._starts: list[int] = []
        self._changed: set[str] = set()

    def set(self, run_id: str, text: str) -> None:
        self.texts[run_id] = text
        self._changed.add(run_id)

    def drop(self, run_id: str) -> None:
        self.texts.pop(run_id, None)
        self._changed.add(run_id)

    def find(self, needle: str, at_most: int) -> list[str] | None:
        """The ids of the runs whose text holds `needle` (and maybe a few more, for a needle
        holding the separator); None if there are more than `at_most`."""
        if not needle:
            return None
        if len(self._changed) > max(_REJOIN_AFTER, len(self.texts) // 8):
            self._rejoin()
        found: list[str] = []
        joined, starts, ids, changed = self._joined, self._starts, self._ids, self._changed
        at = joined.find(needle)
        while at >= 0:
            k = bisect_right(starts, at) - 1
            if ids[k] not in changed:  # (a changed run's text is tested below)
                found.append(ids[k])
                if len(found) > at_most:
                    return None
            at = joined.find(needle, starts[k + 1]) if k + 1 < len(starts) else -1
        texts = self.texts
        found += [i for i in changed if needle in texts.get(i, "")]
        return found if len(found) <= at_most else None

    def _rejoin(self) -> None:
        self._ids = list(self.texts)
        parts = [self.texts[i] for i in self._ids]
        self._starts = list(itertools.accumulate((len(p) + 1 for p in parts), initial=0))[:-1]
        self._joined = "\x00".join(parts)
        self._changed = set()


def _walk(
    keys: list[Key],
    low: Bound | None,
    high: Bound | None,
    mark: Key | None,
    desc: bool,
    lo: int = 0,
    hi: int | None = None,
) -> Iterator[Key]:
    """The keys of `keys[lo:hi]` within [low, high] strictly after the cursor's key
    `mark`, in the sort's direction."""
    start, stop = lo, len(keys) if hi is None else hi
    end = stop
    if low is not None:
        start = max(start, bisect_left(keys, low, lo, end))
    if high is not None:
        stop = min(stop, bisect_right(keys, high, lo, end))
    if mark is not None:
        if desc:
            stop = min(stop, bisect_left(keys, mark, lo, end))
        else:
            start = max(start, bisect_right(keys, mark, lo, end))
    if desc:
        for i in range(stop - 1, start - 1, -1):
            yield keys[i]
    else:
        for i in range(start, stop):
            yield keys[i]


def _walk_ends(
    keys: list[Key], low: Bound | None, high: Bound | None, mark: Key | None, desc: bool
) -> Iterator[Key]:
    """`_walk` over an end-time list, whose open runs are stored at its tail as
    (_OPEN, run_id): in the order MongoDB sorts null, open runs (as (_NULL, run_id))
    before every closed run."""
    split = bisect_left(keys, (_OPEN,))
    # A cursor among the open runs (_NULL) comes before every closed run: ascending the
    # closed runs all follow it, descending none does; `_walk` finds both.
    closed = _walk(keys, low, high, mark, desc, 0, split)
    if low is not None or high is not None:
        return closed  # range operators never match null
    if mark is None or mark[0] == _NULL:
        open_mark = None if mark is None else (_OPEN, mark[1])
        opened: Iterator[Key] = (
            (_NULL, run_id)
            for _, run_id in _walk(keys, None, None, open_mark, desc, split, len(keys))
        )
    elif desc:  # a cursor among the closed runs: descending, every open run follows it
        opened = ((_NULL, run_id) for _, run_id in keys[split:][::-1])
    else:
        return closed
    return itertools.chain(closed, opened) if desc else itertools.chain(opened, closed)


def _cursor_key(after: Cursor) -> Key:
    if after.value is None:
        return (_NULL, after.run_id)
    us = _micros(after.value)
    if us % 1000:
        # A cursor between two milliseconds (not one this API issued): every run at the
        # millisecond below it is before it, every run at the next one after it.
        return (us // 1000, _AFTER_ANY_ID)
    return (us // 1000, after.run_id)


def _sort_field_bounds(flt: RunFilter) -> tuple[Bound | None, Bound | None]:
    """The inclusive key range the sort field's own time bounds allow (None: open)."""
    if flt.sort_by == "start_time":
        low, high = flt.start_time_after, flt.start_time_before
    else:
        low, high = flt.end_time_after, flt.end_time_before
    if low is None and high is None:
        return None, None
    # Range operators never match null: open runs (_NULL) are outside any bound.
    low_key = (_NULL + 1,) if low is None else (_ceil_ms(low),)
    high_key = None if high is None else (_floor_ms(high), _AFTER_ANY_ID)
    return low_key, high_key


def _predicate(flt: RunFilter) -> Callable[[_Row], bool]:
    """`flt` as a test of one row (what memory_store.accepts means for a document)."""
    eq = list(flt.equality().items())
    statuses = frozenset(flt.statuses) if len(set(flt.statuses)) > 1 else None
    search_keys = flt.search_keys
    tags = flt.workflow_tags
    needle = flt.search.lower() if flt.search else None
    ranges = [
        (field, None if low is None else _ceil_ms(low), None if high is None else _floor_ms(high))
        for field, low, high in (
            ("start", flt.start_time_after, flt.start_time_before),
            ("end", flt.end_time_after, flt.end_time_before),
        )
        if low is not None or high is not None
    ]
    include_internal = flt.include_internal

    def accepts(row: _Row) -> bool:
        for name, value in eq:
            if getattr(row, name) != value:
                return False
        if statuses is not None and row.status not in statuses:
            return False
        if not include_internal and row.internal:
            return False
        for tag in tags:
            if tag not in row.tags:
                return False
        for sk in search_keys:
            if not sk.matches(row.terms):
                return False
        if needle is not None and not any(needle in text for text in row.haystack):
            return False
        for field, low, high in ranges:
            value = row.start if field == "start" else row.end
            if value == _NULL:
                return False  # range operators never match null
            if (low is not None and value < low) or (high is not None and value > high):
                return False
        return True

    return accepts


def _append(keys: list[Key], key: Key) -> None:
    keys.append(key)


def _unsorted_remove(keys: list[Key], key: Key) -> None:
    keys.remove(key)


def _remove(keys: list[Key], key: Key) -> None:
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]


def _copy(row: _Row) -> _Row:
    new = _Row()
    # Attribute by attribute, not a getattr/setattr loop over the slots: no call per slot.
    new.attempt = row.attempt
    new.deployment_name = row.deployment_name
    new.end = row.end
    new.execution_id = row.execution_id
    new.haystack = row.haystack
    new.internal = row.internal
    new.keys = row.keys
    new.parent_execution_id = row.parent_execution_id
    new.position = row.position
    new.root_execution_id = row.root_execution_id
    new.run_id = row.run_id
    new.start = row.start
    new.status = row.status
    new.tags = row.tags
    new.terms = row.terms
    new.total_duration_ms = row.total_duration_ms
    new.user_id = row.user_id
    new.workflow_name = row.workflow_name
    return new


def _position(doc: Document) -> tuple[int, int]:
    seq, index = doc.get("position") or (doc.get("seq", 0), -1)
    return (int(seq), int(index))


def _shared_or_none(share: Callable[[str], str], value: Any) -> Any:
    return share(value) if isinstance(value, str) else value


def search_keys_from_terms(terms: Iterable[str]) -> dict[str, str | None]:
    """The search keys `search_keys.search_terms` made `terms` from: `set:k` names each key,
    `null:k` a null value, `eq:k=v` a value (keys hold no `=`, so the first splits)."""
    keys: dict[str, str | None] = {}
    for term in terms:
        kind, _, rest = term.partition(":")
        if kind == "set":
            keys.setdefault(rest, None)
        elif kind == "eq":
            key, _, value = rest.partition("=")
            keys[key] = value
    return keys


def _folded(value: Any) -> str:
    """What accepts compares: str(value or "").lower() (the same object when already so)."""
    text = str(value or "")
    lowered = text.lower()
    return text if lowered == text else lowered


def _micros(value: datetime) -> int:
    return (aware(value) - _EPOCH) // timedelta(microseconds=1)


def to_ms(value: datetime) -> int:
    """A stored time (millisecond precision) as milliseconds since the epoch."""
    return _micros(value) // 1000


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _floor_ms(value: datetime) -> int:
    return _micros(value) // 1000


def _ceil_ms(value: datetime) -> int:
    return -(-_micros(value) // 1000)


class IndexedListReader:
    """ReadModelReader: point reads from `store`, lists from `index` once it is ready
    (from `store` until then, so a list never shows less than the store holds)."""

    def __init__(self, store: ReadModelReader, index: RunListIndex) -> None:
        self.store = store
        self.index = index

    async def get(
        self, collection: str, doc_id: str, *, without: Collection[str] = ()
    ) -> Document | None:
        return await self.store.get(collection, doc_id, without=without)

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        return await self.store.load(collection, ids)

    async def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        if self.index.ready:
            return self.index.list_runs(flt, after, limit)
        return await self.store.list_runs(flt, after, limit)
