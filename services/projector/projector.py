"""Applies a batch of events to the read models: fold in memory, write each changed
document once, by inserts wherever the document is new.

What a batch costs the database (on FerretDB a point read or a replace costs several
inserts; docs/read-models.md, "Measurements"):

- an execution whose first event in the batch is its very first (`seq` 1, index 0) is
  assumed new: nothing is read, and its run rows (holding chunk 0 of their history, the
  head: projection.py), history chunks and pointer are *inserted*: a start is a row and a
  pointer. An insert refused as a duplicate `_id` means the documents exist after all
  (a re-delivery): that execution is projected again the careful way (read, fold, replace);
- an execution this projector wrote recently is folded onto the documents it remembers
  (`KnownDocuments`), so nothing is read either; only changed documents are replaced;
- any other execution: its pointer is read (to find gaps), then its runs and chunks (a
  chunk 0 document only for a run whose row has no head, after the rows).

All of one execution's events in a batch are folded first, so each document is written
at most once per batch, whatever the number of events.

A batch that fails for a reason other than an unavailable server is projected again one
execution at a time, and an execution that still fails is parked (services/projector/
parking.py): the others go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from schemas.events import Event
from services.common.commit_log import CommitLog
from services.common.readmodels.history_chunks import (
    HISTORY_HEAD,
    history_chunk_id,
    history_chunk_key,
    history_ids_of,
    is_block,
)
from services.common.readmodels.projection import ReadModelDocs, project
from services.common.readmodels.store import EXECUTIONS, HISTORY, RUNS, Document, ReadModelStore
from services.projector.parking import ParkedExecutions, is_transient

log = logging.getLogger(__name__)

# Memory a remembered execution is charged beyond its history bodies (pointer, run row).
_ENTRY_BYTES = 2048


@dataclass(slots=True)
class _Remembered:
    """The documents of one execution as this projector last wrote or read them."""

    pointer: Document
    runs: dict[str, Document] = field(default_factory=dict)
    history: dict[str, Document] = field(default_factory=dict)
    size: int = 0


def _doc_size(doc: Document) -> int:
    size = 200
    for held in (doc, doc.get(HISTORY_HEAD) or {}):  # a run row may hold a head
        body = held.get("body")
        if isinstance(body, str | bytes):
            size += len(body)
    return size


class KnownDocuments:
    """An LRU of the documents this projector wrote (or read), per execution, so the next
    batch of a busy execution needs no reads.

    Sound only while this projector is their single writer: the owner of the execution's
    partition. `forget()` drops everything; the projector calls it when partitions move
    (the Kafka rebalance listener in app.py) and when a batch fails (what was written of
    it is unknown). A batch that started before a `forget()` remembers nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, _Remembered] = OrderedDict()
        self._bytes = 0
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self.generation += 1

    def get(self, execution_id: str) -> _Remembered | None:
        entry = self._entries.get(execution_id)
        if entry is not None:
            self._entries.move_to_end(execution_id)
        return entry

    def drop(self, execution_id: str) -> None:
        entry = self._entries.pop(execution_id, None)
        if entry is not None:
            self._bytes -= entry.size

    def keep(self, execution_id: str, entry: _Remembered) -> None:
        self.drop(execution_id)
        entry.size = (
            _ENTRY_BYTES
            + sum(_doc_size(d) for d in entry.runs.values())
            + sum(_doc_size(d) for d in entry.history.values())
        )
        if entry.size > self._max_bytes // 8:
            return  # one huge history chunk must not push out everything else
        self._entries[execution_id] = entry
        self._bytes += entry.size
        while self._bytes > self._max_bytes and self._entries:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.size


class ConcurrentWriter(Exception):
    """Documents of these executions appeared while a batch was being projected: another
    projector writes them too (a rebalance in progress). The batch is retried."""


class Projector:
    """Folds events onto the read models, one batch at a time.

    Single writer per execution (the owner of its partition), so read-fold-replace is
    safe without compare-and-set. Idempotent: the position guards in `projection` ignore
    an event a document already reflects, so a re-delivered or replayed batch changes
    nothing, and an insert never overwrites anything. Gap-free: an event whose execution's
    pointer is more than one commit behind (a lost or reordered record) first pulls the
    missing commits from the event store, so every document is always the fold of a
    prefix of its execution's commits.
    """

    def __init__(
        self,
        store: ReadModelStore,
        commits: CommitLog | None = None,
        memory_bytes: int = 64 << 20,
        parking: ParkedExecutions | None = None,
        history_heads: bool = True,
    ) -> None:
        self._store = store
        self._history_heads = history_heads
        """False: new runs get chunk 0 as a document, not a head (`project`'s
        `new_heads`; settings `projector_history_heads`)."""
        self._commits = commits
        self.known = KnownDocuments(memory_bytes)
        self.parking = parking

    def forget(self) -> None:
        """Stop trusting remembered documents (partitions moved, or a batch failed)."""
        self.known.forget()

    async def apply(
        self, events: Iterable[Event], partitions: Mapping[str, int] | None = None
    ) -> int:
        """Project `events` (in stream order per execution); returns how many were given.

        With parking: events of parked executions are skipped, and an execution whose
        events cannot be projected is parked (`partitions`: where each execution's events
        come from, recorded with it) instead of failing the batch."""
        given = list(events)
        count = len(given)
        parking = self.parking
        if parking is None:
            await self._apply(given)
            return count
        if parking.entries:
            given = [e for e in given if not parking.is_parked(e.execution_id)]
        try:
            await self._apply(given)
        except Exception as exc:
            if isinstance(exc, ConcurrentWriter) or is_transient(exc):
                raise
            self.forget()  # which of its writes happened is unknown
            log.warning("projecting a batch failed (%r); projecting it execution by execution", exc)
            by_execution: dict[str, list[Event]] = {}
            for e in given:
                by_execution.setdefault(e.execution_id, []).append(e)
            for execution_id, own in by_execution.items():
                await self._apply_or_park(
                    execution_id, own, (partitions or {}).get(execution_id), own[0].seq
                )
        return count

    async def _apply_or_park(
        self, execution_id: str, events: list[Event], partition: int | None, seq: int
    ) -> bool:
        assert self.parking is not None
        try:
            await self._apply(events)
        except Exception as exc:
            if isinstance(exc, ConcurrentWriter) or is_transient(exc):
                raise
            self.known.drop(execution_id)
            await self.parking.park(execution_id, partition, seq, exc)
            return False
        return True

    async def retry_parked(self, execution_id: str) -> bool:
        """Fold a parked execution's commits after what its read models reflect; unpark it
        if that works (True), park it again for later if not."""
        if self.parking is None or self._commits is None:
            raise RuntimeError("retry_parked needs parking and a commit source")
        pointer = (await self._store.load(EXECUTIONS, {execution_id})).get(execution_id)
        after = int(pointer["seq"]) if pointer else 0
        commits = await self._commits.read_after(execution_id, after)
        self.known.drop(execution_id)
        events = [e for c in commits for e in c.events]
        if events and not await self._apply_or_park(execution_id, events, None, after + 1):
            return False
        await self.parking.unpark(execution_id)
        return True

    async def _apply(self, given: list[Event]) -> None:
        if not given:
            return
        first_seen: dict[str, Event] = {}
        for e in given:
            first_seen.setdefault(e.execution_id, e)
        fresh = {
            x
            for x, e in first_seen.items()
            if e.seq == 1 and e.index == 0 and self.known.get(x) is None
        }
        existed = await self._project(given, fresh)
        if existed:
            # Assumed new (or chunk 0 assumed absent), found written: a re-delivery, or a
            # retry after a crash between two writes. Read everything, fold, replace.
            log.info("%d executions were already projected; folding onto them", len(existed))
            for x in existed:
                self.known.drop(x)
            again = await self._project(
                [e for e in given if e.execution_id in existed], set(), careful=True
            )
            if again:
                # Documents appeared between a read and an insert: another writer.
                raise ConcurrentWriter(sorted(again))

    async def _project(
        self, events: list[Event], fresh: set[str], careful: bool = False
    ) -> set[str]:
        """One pass: fold, then write history → runs → pointers. Returns the executions
        with a document refused as existing (the ones of `fresh` that turned out to exist,
        or a chunk 0 thought absent): nothing more of theirs is written in this pass.

        Chunk 0 of a run usually lives in its row (the head): its document is read only
        for runs whose row has no head or is not there (written before heads, a run opened
        by a reset, a head grown too large), after the rows; `careful` reads it with
        everything else (a pass after a refused insert)."""
        generation = self.known.generation
        docs = ReadModelDocs()
        remembered: dict[str, _Remembered] = {}
        for x in {e.execution_id for e in events} - fresh:
            entry = self.known.get(x)
            if entry is not None:
                remembered[x] = entry
                docs.executions[x] = entry.pointer
                docs.runs.update(entry.runs)
                docs.history.update(entry.history)
        unknown = {e.execution_id for e in events} - fresh - set(remembered)
        docs.executions.update(await self._store.load(EXECUTIONS, unknown))
        seen = {x: int(p["seq"]) for x, p in docs.executions.items()}
        ordered = await self._fill_gaps(events, seen)

        owners: dict[str, dict[str, str]] = {RUNS: {}, HISTORY: {}}  # _id -> execution
        for e in ordered:
            owners[RUNS][e.run_id] = e.execution_id
            for history_id in history_ids_of(e.run_id, e.event_number):
                owners[HISTORY][history_id] = e.execution_id
        owners[EXECUTIONS] = {e.execution_id: e.execution_id for e in ordered}
        missing_runs = {i for i, x in owners[RUNS].items() if x not in fresh} - set(docs.runs)
        missing_chunks = {i for i, x in owners[HISTORY].items() if x not in fresh} - set(
            docs.history
        )
        heads = {history_chunk_key(e.run_id, 0): e.run_id for e in ordered}
        later = set() if careful else missing_chunks & set(heads)
        runs, chunks = await asyncio.gather(
            self._store.load(RUNS, missing_runs),
            self._store.load(HISTORY, missing_chunks - later),
        )
        docs.runs.update(runs)
        docs.history.update(chunks)
        later = {i for i in later if HISTORY_HEAD not in docs.runs.get(heads[i], {})}
        if later:
            docs.history.update(await self._store.load(HISTORY, later))
        before = {
            HISTORY: set(docs.history),
            RUNS: set(docs.runs),
            EXECUTIONS: set(docs.executions),
        }

        project(ordered, docs, self._history_heads)
        history, changed_runs, pointers = docs.changes()
        chunks_written = {i: d for i, d in history.items() if not is_block(i)}
        blocks = {i: d for i, d in history.items() if is_block(i)}
        # History first (chunks, then the blocks made of them), then runs, then pointers: a
        # reader who finds a pointer at seq s finds every run and history event up to s
        # (the API folds commits after s). A crash before the blocks are written leaves the
        # block's last event unacknowledged; its re-delivery seals the block.
        existed: set[str] = set()
        steps = (
            (HISTORY, chunks_written),
            (HISTORY, blocks),
            (RUNS, changed_runs),
            (EXECUTIONS, pointers),
        )
        for name, changed in steps:
            owner = owners[name]
            new = {i: d for i, d in changed.items() if i not in before[name]}
            new = {i: d for i, d in new.items() if owner[i] not in existed}
            existed.update(owner[i] for i in await self._store.insert_new(name, new))
            # An execution with a refused insert writes nothing more in this pass: it is
            # read and folded again (a head moved out over a chunk 0 document left by a
            # crash must not leave its row without the head and the document stale).
            old = {i: d for i, d in changed.items() if i in before[name]}
            await self._store.save(name, {i: d for i, d in old.items() if owner[i] not in existed})

        if self.known.generation == generation:
            self._remember(docs, chunks_written, changed_runs, ordered, existed)
        return existed

    def _remember(
        self,
        docs: ReadModelDocs,
        written_chunks: Mapping[str, Document],
        written_runs: Mapping[str, Document],
        events: list[Event],
        existed: set[str],
    ) -> None:
        """Keep, per execution, its pointer, the runs and the history chunks the batch
        touched, as they now are in the store (chunks and heads in their stored form:
        what a read would return)."""
        entries: dict[str, _Remembered] = {}
        for e in events:
            x = e.execution_id
            if x in existed or x not in docs.executions:
                continue
            entry = entries.get(x)
            if entry is None:
                entry = entries[x] = _Remembered(pointer=docs.executions[x])
            run = written_runs.get(e.run_id) or docs.runs.get(e.run_id)
            if run is not None and run.get("end_time") is None:
                # (A closed run gets no more events, and its result may be large.)
                entry.runs[e.run_id] = run
            chunk_id = history_chunk_id(e.run_id, e.event_number)
            chunk = written_chunks.get(chunk_id) or docs.history.get(chunk_id)
            if chunk is not None:
                entry.history[chunk_id] = chunk
        for x, entry in entries.items():
            self.known.keep(x, entry)

    async def _fill_gaps(self, events: list[Event], seen: dict[str, int]) -> list[Event]:
        """`events` with the events of any commit missing before them spliced in."""
        if self._commits is None:
            return events
        last = dict(seen)
        missing: dict[int, tuple[str, int, int]] = {}  # event index -> (execution, after, n)
        for i, e in enumerate(events):
            upto = last.get(e.execution_id, 0)
            if e.seq > upto + 1:
                missing[i] = (e.execution_id, upto, e.seq - 1 - upto)
            last[e.execution_id] = max(upto, e.seq)
        if not missing:
            return events
        fetched = await asyncio.gather(
            *(self._commits.read_after(x, after, limit=n) for x, after, n in missing.values())
        )
        fills = dict(zip(missing, fetched, strict=True))
        out: list[Event] = []
        for i, e in enumerate(events):
            for commit in fills.get(i, ()):
                out.extend(commit.events)
            out.append(e)
        log.warning(
            "filled %d missing commits from the event store",
            sum(len(c) for c in fills.values()),
        )
        return out
