"""Reads runs, executions and histories, folding commits the projector has not applied
yet, so a point read reflects every command whose HTTP call has returned.

Every read is an `_id` lookup, and the independent ones of a request go out together:

Sequential round trips per request (`‖` = sent together):

- get_run: closed run 1 (its row: final, nothing follows a run's terminal event); open
  run 2 (the row, then the commit at the row's `seq` ‖ the one after it, normally a miss);
- get_workflow_execution: 2 (the pointer, then its latest run's row ‖ the commit after
  the pointer's `seq`);
- a history page (paging extension): closed run 1 (the row ‖ the page's chunks); open run
  2 (then the commit probe); of an execution 2 (the pointer, then row ‖ chunks ‖ probe);
- a whole history: 1 for a closed run of one chunk (≤ 100 events: the row, which holds
  chunk 0 as its head), else 2 (the row, then the sealed blocks and the open tail's
  chunks ‖ the commit probe); one more for an execution's, and one more when a block is
  missing (a history written before blocks existed, or too large for one): its chunks.
  A row without a head (a run opened by a reset, a head past its bound, a row written
  before heads existed) has chunk 0 read as a document in the second round trip.

History reads take a sealed block of 1,000 events instead of its chunks wherever they need
at least 4 of its 10 chunks (`history_doc_ids`): 10,000 events are 10 block reads, not
100 chunk reads.

get_run and get_workflow_execution of a run the API's run list index holds start from
its row instead (`_indexed_run`, `_indexed_execution`): 1 (the commit at the row's seq ‖
the probe after it); none for a closed run whose result, if any, the index keeps.

Why folding from a `seq` is enough: the projector writes a batch's history chunks, then its
runs, then its execution pointers. So once a pointer (or a run row) says `seq`, every run
row (or that run's history) up to the commits before `seq` is already written, and the
commit at `seq` (a batch can end between two events of one commit) and the commits after
it (read by `_id` until one is missing, together with it) are all a reader can be missing.
A chunk read at the same time as its row can predate the row; the page checks it holds
what the row promises and reads it again if not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.commits import Commit
from schemas.common import ExecutionStatus
from schemas.events import Event, EventType
from services.api.answered import AnsweredRecently
from services.api.page_tokens import PROCESS_TOKENS, PageTokens
from services.common.commit_log import CommitLog
from services.common.metrics import POINT_READS
from services.common.readmodels.history_chunks import (
    HISTORY_HEAD,
    chunk_ids_uncovered,
    event_text,
    head_docs,
    history_chunk_key,
    history_doc_ids,
    lines_between,
    texts_of_lines,
)
from services.common.readmodels.list_index import IndexedListReader, RunListIndex
from services.common.readmodels.projection import apply_to_execution, apply_to_run, is_newer
from services.common.readmodels.reader import ReadModelReader
from services.common.readmodels.run_filter import BadPageToken, Cursor, RunFilter
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS

Document = dict[str, Any]

MAX_HISTORY_PAGE = 1000
"""Largest `page_size` of the history paging extension."""


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as of the newest commit: its row as the projection had it (which holds its
    first `projected` events in history chunks) with the newer events folded in."""

    run: Document
    projected: int
    unprojected: list[Event]
    """The run's events after the first `projected`, from the event store, in order."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Events of one run in event_number order, as JSON text ready to be spliced into a
    response, and where the next page starts (None when this page reaches the end)."""

    run: Document
    lines: list[bytes]
    """Runs of event JSON texts (UTF-8) joined by newlines, as the history documents hold
    them: a whole block is one run, never split (`shapes.history_body` splices them)."""
    next_after: int | None

    @property
    def events(self) -> list[str]:
        """One JSON text per event."""
        return texts_of_lines(self.lines)


class RunReader:
    def __init__(
        self,
        models: ReadModelReader,
        commits: CommitLog,
        tokens: PageTokens | None = None,
        answered: AnsweredRecently | None = None,
    ) -> None:
        self.models = models
        self.commits = commits
        self.tokens = tokens or PROCESS_TOKENS
        # Ids this instance just answered a command of: a point read of one the index does
        # not hold yet waits for it (`_awaited_row`).
        self.answered = answered
        # The API's run list index, when the models come with one: point reads of the
        # runs it holds start from its rows instead of the store's (see `_indexed_run`).
        self.index: RunListIndex | None = (
            models.index if isinstance(models, IndexedListReader) else None
        )

    def _visible(self, run: Document) -> bool:
        """Whether this reader shows `run` (all runs; see access.OwnedRunReader)."""
        return True

    # --- point reads ---------------------------------------------------------------

    async def execution(self, execution_id: str) -> Document | None:
        """The latest run of an execution, as of the newest commit."""
        run = await self._indexed_execution(execution_id)
        _count(run)
        if isinstance(run, _Unanswered):
            found = await self._latest(execution_id, None)
            run = found[0].run if found else None
        return run if run is not None and self._visible(run) else None

    async def run(self, run_id: str) -> Document | None:
        """One run by id, as of the newest commit of its execution."""
        run = await self._indexed_run(run_id)
        _count(run)
        if isinstance(run, _Unanswered):
            found = await self._run(run_id, None)
            run = found[0].run if found else None
        return run if run is not None and self._visible(run) else None

    # The run list index (services/common/readmodels/list_index.py) holds each run as the
    # fold of a prefix of its events, like a projected row, but as fresh as the API's own
    # tail of the events topic (usually ahead of the projector), and in this process. So
    # a point read can start from its row instead of reading the pointer and the row from
    # the store: what the row may lack are the events of its last commit after its
    # position (the feed folds a commit's events one by one) and the commits after it,
    # and one round trip reads both (the commit at the row's seq, for a completed run its
    # result, ‖ the probe after it). A run whose row is closed is final: no read at all,
    # unless it completed and the index does not keep its result (then its commit).
    # Anything else (an id the index does not hold, a run opened since the row, the
    # index not ready) goes the store's way.

    def _ready_index(self) -> RunListIndex | None:
        return self.index if self.index is not None and self.index.ready else None

    async def _awaited_row(
        self, lookup: Callable[[str], Document | None], key: str
    ) -> Document | None:
        """`lookup(key)` of the index, waiting (at most `answered.wait_s`) for a row the
        index does not hold yet when this instance just answered a command of `key`: its
        events are on their way (services/api/answered.py)."""
        row = lookup(key)
        answered = self.answered
        if row is not None or answered is None or not answered.expects(key):
            return row
        loop = asyncio.get_running_loop()
        deadline = loop.time() + answered.wait_s
        while row is None and loop.time() < deadline:
            await asyncio.sleep(_INDEX_POLL_S)
            row = lookup(key)
        return row

    async def _indexed_run(self, run_id: str) -> Document | _Unanswered | None:
        index = self._ready_index()
        row = await self._awaited_row(index.run_document, run_id) if index else None
        if row is None:
            return _UNANSWERED
        status = ExecutionStatus(row["status"])
        if not status.is_open and (status is not ExecutionStatus.COMPLETED or "result_json" in row):
            return row
        commits = await self._commits_from(row, probe=status.is_open)
        if commits is None:
            return _UNANSWERED
        return _folded_run(row, [e for c in commits for e in c.events if e.run_id == run_id])

    async def _indexed_execution(self, execution_id: str) -> Document | _Unanswered | None:
        index = self._ready_index()
        row = await self._awaited_row(index.latest_run_document, execution_id) if index else None
        if row is None:
            return _UNANSWERED
        commits = await self._commits_from(row, probe=True)
        if commits is None:
            return _UNANSWERED
        # The execution's pointer as of the row (only the latest run gets events, so the
        # pointer's position is the row's): a start in the commits means another run.
        pointer: Document | None = {
            "latest_run_id": row["run_id"],
            "root_execution_id": row["root_execution_id"],
            "position": row["position"],
        }
        events = [e for c in commits for e in c.events]
        for event in events:
            pointer = apply_to_execution(pointer, event)
        if pointer is None or pointer["latest_run_id"] != row["run_id"]:
            return _UNANSWERED  # a run opened since the row: read it the store's way
        return _folded_run(row, [e for e in events if e.run_id == row["run_id"]])

    async def _commits_from(self, row: Document, *, probe: bool) -> list[Commit] | None:
        """The commit holding the row's newest event and (with `probe`) every stored commit
        after it, in one round trip; None if that commit is not found (not expected: the
        engine stores a commit before it publishes its events)."""
        own, newer = await self._commit_and_after(
            str(row["execution_id"]), int(row["seq"]), probe=probe
        )
        return None if own is None else [own, *newer]

    async def _commits_since(self, execution_id: str, seq: int) -> list[Commit]:
        """The commit at `seq` (none at 0) and every stored commit after it, in one round
        trip. A projected row or pointer at `seq` can lack the later events of that commit
        (a projector batch may end between two events of one commit); folding skips the
        events a document already reflects."""
        own, newer = await self._commit_and_after(execution_id, seq, probe=True)
        return newer if own is None else [own, *newer]

    async def _commit_and_after(
        self, execution_id: str, seq: int, *, probe: bool
    ) -> tuple[Commit | None, list[Commit]]:
        """The commit at `seq` (None if missing, or `seq` 0) and, with `probe`, the stored
        commits after it (read by `_id` until one is missing), sent together."""
        if seq <= 0:
            return None, await self.commits.read_after(execution_id, 0) if probe else []
        if not probe:
            return await self.commits.get(execution_id, seq), []
        own, newer = await asyncio.gather(
            self.commits.get(execution_id, seq), self.commits.read_after(execution_id, seq)
        )
        return own, newer

    async def run_history_page(
        self, run_id: str, after: int = 0, limit: int | None = None
    ) -> HistoryPage | None:
        """Events `after`+1 … `after`+`limit` of a run (all after `after` when `limit` is
        None); None if the run is unknown."""
        found = await self._run(run_id, _Span(after, limit))
        return await self._page(found, after, limit)

    async def execution_history_page(
        self, execution_id: str, after: int = 0, limit: int | None = None
    ) -> HistoryPage | None:
        """`run_history_page` of the execution's latest run."""
        found = await self._latest(execution_id, _Span(after, limit))
        return await self._page(found, after, limit)

    async def run_history(self, run_id: str) -> tuple[Document, list[Document]] | None:
        """A run and its events (parsed) ordered by event_number; None if unknown."""
        return _parsed(await self.run_history_page(run_id))

    async def execution_history(self, execution_id: str) -> tuple[Document, list[Document]] | None:
        """The latest run of an execution and its events (see `run_history`)."""
        return _parsed(await self.execution_history_page(execution_id))

    async def _latest(
        self, execution_id: str, span: _Span | None
    ) -> tuple[RunView, dict[str, Document]] | None:
        pointer = await self.models.get(EXECUTIONS, execution_id)
        if pointer is None:
            # Not projected yet: every event of the execution is in its commits.
            view = _view_from_commits(await self.commits.read_after(execution_id, 0))
            return (view, {}) if view is not None else None
        latest = str(pointer["latest_run_id"])
        row, newer, chunks = await asyncio.gather(
            self._row(latest, span),
            self._commits_since(execution_id, int(pointer["seq"])),
            self._first_chunks(latest, span),
        )
        for event in (e for c in newer for e in c.events):
            pointer = apply_to_execution(pointer, event)
        assert pointer is not None
        if pointer["latest_run_id"] != latest or row is None:
            # A run opened after the pointer's seq has all its events in `newer`; a row
            # missing under a pointer (a rebuild in progress) is found the slow way.
            view = _view_from_commits(newer)
            if view is not None and view.run["run_id"] == pointer["latest_run_id"]:
                return view, {}
            return await self._run(str(pointer["latest_run_id"]), span)
        view = _fold(row, [e for c in newer for e in c.events if e.run_id == latest])
        assert view is not None
        chunks.update(head_docs(row))
        chunks.update(await self._more_chunks(latest, span, view.projected, chunks))
        return view, chunks

    async def _run(
        self, run_id: str, span: _Span | None
    ) -> tuple[RunView, dict[str, Document]] | None:
        row, chunks = await asyncio.gather(
            self._row(run_id, span), self._first_chunks(run_id, span)
        )
        if row is not None:
            projected = int(row.get("event_count", 0))
            chunks.update(head_docs(row))
            more = self._more_chunks(run_id, span, projected, chunks)
            if not ExecutionStatus(row["status"]).is_open:
                # Nothing follows a run's terminal event (a reset or restart opens another
                # run), and the projector wrote its history before the row: it is final.
                chunks.update(await more)
                return RunView(row, projected, []), chunks
            newer, extra = await asyncio.gather(
                self._commits_since(str(row["execution_id"]), int(row["seq"])), more
            )
            chunks.update(extra)
            view = _fold(row, [e for c in newer for e in c.events if e.run_id == run_id])
            assert view is not None
            return view, chunks
        # Not projected (yet): the engine's locator names its execution.
        execution_id = await self.commits.locate_run(run_id)
        if execution_id is None:
            return None
        pointer = await self.models.get(EXECUTIONS, execution_id)
        seq = int(pointer["seq"]) if pointer else 0
        # Read again now that the pointer is known: a pointer at `seq` means the run's row
        # holds every event of the run up to `seq` (or the run has none up to there).
        row = await self._row(run_id, span)
        after = max(seq, int(row["seq"]) if row else 0)
        newer = await self._commits_since(execution_id, after)
        view = _fold(row, [e for c in newer for e in c.events if e.run_id == run_id])
        return (view, {}) if view is not None else None

    async def _row(self, run_id: str, span: _Span | None) -> Document | None:
        """A run row; for a point read (no `span`) without its head (chunk 0 of its
        history, up to ~1 MiB compressed, which only history reads use): left on the
        server."""
        return await self.models.get(RUNS, run_id, without=() if span else _NOT_FOR_POINT_READS)

    async def _first_chunks(self, run_id: str, span: _Span | None) -> dict[str, Document]:
        """The history documents a read most likely needs, read before the row says how
        many events the run has: the page's own chunks or blocks (`_first_ids`)."""
        ids = _first_ids(run_id, span)
        return await self.models.load(HISTORY, ids) if ids else {}

    async def _more_chunks(
        self, run_id: str, span: _Span | None, projected: int, have: Mapping[str, Document]
    ) -> dict[str, Document]:
        """The blocks and chunks of the span's events up to `projected` that are not in
        `have`; for a block asked for and missing, its chunks."""
        if span is None:
            return {}
        first = span.after + 1
        last = projected if span.limit is None else min(projected, span.after + span.limit)
        asked = _first_ids(run_id, span)
        missing = {i for i in asked if i not in have}  # (blocks among them: not sealed)
        plan = history_doc_ids(run_id, first, last, projected, missing)
        ids = [i for i in plan if i not in have]
        got = await self.models.load(HISTORY, ids) if ids else {}
        docs = {**have, **got}
        fallback = [i for i in chunk_ids_uncovered(docs, run_id, first, last) if i not in docs]
        if fallback:
            got.update(await self.models.load(HISTORY, fallback))
        return got

    async def _page(
        self, found: tuple[RunView, dict[str, Document]] | None, after: int, limit: int | None
    ) -> HistoryPage | None:
        if found is None or not self._visible(found[0].run):
            return None
        view, chunks = found
        total = int(view.run.get("event_count", 0))
        last = total if limit is None else min(total, after + limit)
        # Events up to `projected` are in the chunks (and the row's head), the ones after
        # in `unprojected`.
        from_chunks = min(last, view.projected)
        lines = await self._chunk_lines(view.run, after + 1, from_chunks, chunks)
        start = max(after, from_chunks)
        newer = [event_text(e) for e in view.unprojected if start < e.event_number <= last]
        if newer:
            lines.append("\n".join(newer).encode())
        more = limit is not None and last < total
        return HistoryPage(view.run, lines, last if more else None)

    async def _chunk_lines(
        self, run: Document, first: int, last: int, docs: Mapping[str, Document]
    ) -> list[bytes]:
        """Events `first`..`last` from the run's blocks and chunks (`lines_between`), chunk
        0 from the row's head if it has one (the head wins over a chunk 0 document: one
        can be left stale by a crash), reading again the chunks (blocks never change)
        that lack events (read at the same time as a row written after them)."""
        if last < first:
            return []
        run_id = str(run["run_id"])
        head = head_docs(run)
        docs = {**docs, **head}
        lines = lines_between(docs, run_id, first, last)
        if lines is None:
            ids = [i for i in chunk_ids_uncovered(docs, run_id, first, last) if i not in head]
            fresh = {**docs, **await self.models.load(HISTORY, ids), **head}
            lines = lines_between(fresh, run_id, first, last)
        if lines is None:
            raise RuntimeError(
                f"the history chunks of run {run_id!r} lack events of {first}..{last} "
                "that its row reflects"
            )
        return lines

    # --- the list -------------------------------------------------------------------

    async def list_runs(
        self, flt: RunFilter, page_size: int, token: str | None
    ) -> tuple[list[Document], str | None]:
        """One page of runs and the token of the next (None on the last page).

        Raises BadPageToken for a token not made for `flt`.
        """
        after: Cursor | None = self.tokens.read(flt, token) if token else None
        rows = await self.models.list_runs(flt, after, page_size + 1)
        if len(rows) <= page_size:
            return rows, None
        return rows[:page_size], self.tokens.make(flt, rows[page_size - 1])

    async def rows(self, flt: RunFilter, limit: int) -> list[Document]:
        """Up to `limit` list rows matching `flt`, unpaged (for aggregates)."""
        return await self.models.list_runs(flt, None, limit)

    async def execution_tree(self, root_execution_id: str, limit: int) -> list[str]:
        """The executions of a root's tree this reader shows, in start order (then id)."""
        flt = RunFilter(root_execution_id=root_execution_id, order="asc")
        rows = await self.models.list_runs(flt, None, limit)
        rows.sort(key=lambda r: (r["start_time"], r["execution_id"]))
        seen: list[str] = []
        for row in rows:
            eid = str(row["execution_id"])
            if eid not in seen and await self.execution(eid) is not None:
                seen.append(eid)
        return seen


@dataclass(frozen=True, slots=True)
class _Span:
    """The events a history read wants: after `after`, at most `limit` (None: all)."""

    after: int
    limit: int | None


_INDEX_POLL_S = 0.002
"""How often a point read waiting for the index looks again (`_awaited_row`): the index
is folded from the API's feed, which brings an engine batch's events in one fetch."""

_NOT_FOR_POINT_READS = (HISTORY_HEAD,)
"""Fields of a run row that point reads (`run`, `execution`) leave on the server."""


def _first_ids(run_id: str, span: _Span | None) -> list[str]:
    """What a history read asks for together with the row: for a page its blocks and
    chunks, as if all its events were projected, but chunk 0, which the row holds (its
    head); a whole history, nothing more (most histories are short: the row is all).
    A row without a head (written before heads, a run opened by a reset, a head too
    large) has chunk 0 read with the rest (`_more_chunks`)."""
    if span is None:
        return []
    last = span.after + (span.limit or 1)
    zero = history_chunk_key(run_id, 0)
    return [i for i in history_doc_ids(run_id, span.after + 1, last, last) if i != zero]


def _fold(row: Document | None, events: list[Event]) -> RunView | None:
    """`row` with `events` applied: the events of this run after a seq up to which the
    projection has written the run's whole history (the ones `row` reflects are skipped)."""
    projected = int(row.get("event_count", 0)) if row else 0
    unprojected = [e for e in events if is_newer(e, row)]
    run = row
    for event in unprojected:
        run = apply_to_run(run, event)
    return RunView(run, projected, unprojected) if run is not None else None


class _Unanswered:
    """What an index read returns when the store's path must answer instead."""


_UNANSWERED = _Unanswered()
_BY_INDEX = POINT_READS.labels(path="index")
_BY_STORE = POINT_READS.labels(path="store")


def _count(answer: object) -> None:
    (_BY_STORE if isinstance(answer, _Unanswered) else _BY_INDEX).inc()


def _folded_run(row: Document, events: list[Event]) -> Document | _Unanswered | None:
    """An index row (`RunListIndex.point_document`) with the run's `events` from the commit
    holding its newest event onwards folded in, and `result_json` taken from them when the
    run completed at or before the row's position (the index keeps no results)."""
    run: Document | None = row
    for event in events:
        run = apply_to_run(run, event)  # (events the row reflects change nothing)
    if run is None:
        return None
    if run["status"] == ExecutionStatus.COMPLETED.value and "result_json" not in run:
        done = [e for e in events if e.type is EventType.WORKFLOW_EXECUTION_COMPLETED]
        if not done:
            return _UNANSWERED
        run = {**run, "result_json": json.dumps(done[-1].attributes.result.value)}
    return run


def _view_from_commits(commits: list[Commit]) -> RunView | None:
    """The latest run of an execution folded from commits that hold all its events."""
    pointer: Document | None = None
    for event in (e for c in commits for e in c.events):
        pointer = apply_to_execution(pointer, event)
    if pointer is None:
        return None
    latest = pointer["latest_run_id"]
    return _fold(None, [e for c in commits for e in c.events if e.run_id == latest])


def _parsed(page: HistoryPage | None) -> tuple[Document, list[Document]] | None:
    return None if page is None else (page.run, [json.loads(t) for t in page.events])


# --- the history paging extension's token ---------------------------------------------


def history_token(run_id: str, after: int) -> str:
    """Where the next history page starts: the run it belongs to and the last event number
    returned. Not signed: it only names a position in a history its bearer may read, and
    both routes check the run it names (see routes_runs)."""
    raw = json.dumps([run_id, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_history_token(token: str) -> tuple[str, int]:
    """(run_id, after) from a history page token; BadPageToken if it is not one."""
    text = token.strip()
    try:
        if not text.isascii():
            raise ValueError("non-ASCII")
        run_id, after = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run id")
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ValueError("position")
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadPageToken(
            "next_page_token is not a history page token; pass the next_page_token of the "
            "previous history page unchanged"
        ) from exc
    return run_id, after
