"""The engine's batches as a state machine, in three overlapping stages, with offsets
committed in order. This module alone moves a batch from one phase to the next:

    received → decided → storing → stored → publishing → committed
                  (any phase before committed → failed: sought back, consumed again)

A batch is decided (engine CPU), stored (MongoDB), then published (Kafka) before its
offsets are committed. Done strictly in turn, each server waits for the others most of
the time, so the stages overlap:

    decide N+1   ||   store N   ||   publish N-1

- N+1 is decided against the cached states as N left them, before N is stored. If N's
  store turns out differently (a start whose execution existed, a seq another writer
  took), N is completed with reads and N+1 is forgotten and decided again. A batch that
  reads stored history (a reset, a redelivered record) is decided only after N is stored.
- Appends go in batch order: N+1's store starts once N is stored as decided (or, if it
  was not, once N is completed), without waiting for N-1's publish to be acknowledged
  (unless it failed already): the store, the critical path of a drain, stays busy.
- At most one batch is being published (`PublishStage`); N+1's publishing starts only
  after N's has finished, so the records of one key keep their order across batches.
- N's offsets are committed only after everything it implies is acknowledged; with
  `commit_every_s`, at most that often: the offsets of the batches published meanwhile
  go in one request (a crash redelivers those batches, whose commits are stored and
  only re-published; services/engine/redelivery.py).
- If N's publishing fails, N+1 is stored but not published either: both are sought
  back, and their redelivery re-publishes the stored commits without deciding again
  (services/engine/redelivery.py). A failed store or decision seeks back in the same way.
- When no batch follows, a background task completes the stored batch on its own, so a
  lone batch is not left waiting for the next one.
- A completed batch's outcomes are final (its commits stored): they go to the API
  instances waiting for them (`Replier`, services/engine/replies.py) at once, before the
  batch waits for the one before to be published; its outcome records follow on Kafka.
  A batch stored whole (nothing refused) is answered as decided: its replies go from its
  store task as soon as the insert is answered, before its completion.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from aiokafka import TopicPartition

from schemas.commands import Command
from schemas.commits import Commit
from schemas.outcomes import CommandOutcome
from services.common.kafka_io import Position
from services.engine.offsets import (
    Consumer,
    commit_offsets,
    earliest,
    earliest_of,
    following,
    seek_back,
)
from services.engine.outbound import Outbound
from services.engine.processor import Completed, Decision, Parsed, Round, StoredRound
from services.engine.publish_stage import PublishStage
from services.engine.validation import InboundRecord

log = logging.getLogger(__name__)


class Phase(Enum):
    RECEIVED = "received"
    DECIDED = "decided"
    STORING = "storing"
    STORED = "stored"
    PUBLISHING = "publishing"
    COMMITTED = "committed"
    """Published, and its offsets committed, or queued for the next commit (at most
    `commit_every_s` later, and before a rebalance or a shutdown completes)."""
    FAILED = "failed"
    """Sought back: it is consumed again."""


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.RECEIVED: frozenset({Phase.DECIDED}),
    Phase.DECIDED: frozenset({Phase.DECIDED, Phase.STORING}),  # decided again
    Phase.STORING: frozenset({Phase.STORED}),
    Phase.STORED: frozenset({Phase.PUBLISHING}),
    Phase.PUBLISHING: frozenset({Phase.COMMITTED}),
    Phase.COMMITTED: frozenset(),
    Phase.FAILED: frozenset(),
}


@dataclass(eq=False, slots=True)
class Batch:
    """One consumed batch on its way through the pipeline."""

    consumer: Consumer
    positions: list[Position]
    phase: Phase = Phase.RECEIVED
    decision: Decision | None = None
    storing: asyncio.Task[StoredRound] | None = None
    received_at: float = field(default_factory=time.time)
    """When the pipeline took it (wall clock: compared with its records' timestamps)."""
    received_perf: float = field(default_factory=time.perf_counter)
    reply_routes: Any = None
    """Who waits for its outcomes, from its records' reply headers (`Replier.routes`)."""
    encoded: dict[int, bytes] | None = None
    """The JSON its direct replies made, when they went out as soon as it was stored
    (`Outbound.encoded`: its records reuse it)."""

    @property
    def start(self) -> dict[TopicPartition, int]:
        """Where to seek back to, to consume the batch again."""
        return earliest(self.positions)


class Processor(Protocol):
    """What the pipeline needs of `services.engine.processor.CommandProcessor`."""

    def parse(self, records: Sequence[InboundRecord]) -> Parsed: ...

    def needs_stored_history(self, parsed: Parsed) -> bool: ...

    async def decide(self, parsed: Parsed) -> Decision: ...

    async def store(self, round_: Round) -> StoredRound: ...

    async def complete(self, decision: Decision, stored: StoredRound) -> Completed: ...

    def forget(self, parsed: Parsed) -> None: ...


class Replier(Protocol):
    """What the pipeline needs of `services.engine.replies.ReplySender`."""

    def routes(self, commands: Sequence[tuple[InboundRecord, Command]]) -> Any:
        """Who waits for the outcomes of a batch's parsed commands (None: nobody)."""
        ...

    def send(
        self,
        routes: Any,
        outcomes: Sequence[CommandOutcome],
        commits: Sequence[Commit],
        encoded: dict[int, bytes],
    ) -> None:
        """Write the outcomes (and the STARTED events of the runs the commits open) to
        those waiting; never waits, never raises. What it encodes goes into `encoded`
        (by the model's `id()`) for the batch's records to reuse."""
        ...


@dataclass(frozen=True, slots=True)
class _Handover:
    """How completing the batch being stored went."""

    redecided: bool = False
    """Part of it was decided again: batches decided on top of it are stale."""
    seek: dict[TopicPartition, int] = field(default_factory=dict)
    """Non-empty when it failed: where to consume again from (it, and what follows)."""
    consumer: Consumer | None = None


class EnginePipeline:
    def __init__(
        self,
        processor: Processor,
        publish: Callable[[Outbound], Awaitable[None]],
        backoff_seconds: float,
        observe: Callable[[Batch, Phase], None] | None = None,
        commit_every_s: float = 0.0,
        replier: Replier | None = None,
    ) -> None:
        """`observe` is told of every phase a batch enters (tests, tracing).
        `commit_every_s`: commit offsets at most this often (0: after every batch).
        `replier`: where a completed batch's outcomes go before they are published."""
        self._processor = processor
        self._replier = replier
        self._publish = publish
        self._backoff = backoff_seconds
        self._observe = observe
        self._publishing = PublishStage()
        # Held while a batch is decided or completed: the cached states are changed by
        # both, and appends must follow batch order.
        self._lock = asyncio.Lock()
        self._storing: Batch | None = None
        self._completers: set[asyncio.Task[None]] = set()
        # Where a partition was sought back to outside `submit` (by a background
        # completion or `drain`), while FastStream may already hold a batch fetched from
        # further on: such a batch is dropped, and the partition sought back again, until
        # one starts there.
        self._fences: dict[TopicPartition, int] = {}
        self._offsets = _CoalescedCommits(commit_every_s)

    async def submit(
        self,
        consumer: Consumer,
        positions: Sequence[Position],
        records: Sequence[InboundRecord],
    ) -> None:
        """Decide a consumed batch and start storing it. Returns once its store has
        started (in the background); publishing and the offset commit follow."""
        async with self._lock:
            if self._fenced_off(consumer, positions):
                return
            started = time.perf_counter()
            batch = Batch(consumer, list(positions))
            parsed = self._processor.parse(records)
            if self._replier is not None:
                batch.reply_routes = self._reply_routes(parsed)
            before: _Handover | None = None
            try:
                if self._processor.needs_stored_history(parsed):
                    before = await self._complete_storing()
                self._decided(batch, await self._processor.decide(parsed))
                decided = time.perf_counter()
                on_top = before is None  # decided on the states of the batch being stored
                if before is None:
                    # Once the batch before is known stored as decided, this one's store
                    # starts at once, while the one before is completed.
                    before = await self._complete_storing(then_store=batch)
                if before.seek:
                    # The batch before failed, and this one was decided on its states:
                    # forget it; both are consumed again.
                    await self._abandon_storing(batch)
                    self._processor.forget(parsed)
                elif before.redecided and on_top:
                    self._processor.forget(parsed)
                    self._decided(batch, await self._processor.decide(parsed))
                seek = before.seek
            except Exception:
                log.exception(
                    "deciding a batch of %d commands failed; it will be retried", len(records)
                )
                if before is None:
                    before = await self._complete_storing()
                await self._abandon_storing(batch)
                self._processor.forget(parsed)
                seek = earliest_of(before.seek, batch.start)
            if seek:
                self._enter(batch, Phase.FAILED)
                seek_back(consumer, seek, batch.start)
                await asyncio.sleep(self._backoff)
                return
            if batch.phase is Phase.DECIDED:
                self._start_storing(batch)
            # Let the store send its first request now: what runs next (FastStream handing
            # over the next batch, deciding it) may not yield to the loop for a long while.
            await asyncio.sleep(0)
            log.debug(
                "batch of %d: decided in %.1f ms, then waited %.1f ms for the batch before",
                len(records),
                (decided - started) * 1000,
                (time.perf_counter() - decided) * 1000,
            )

    def _reply_routes(self, parsed: Parsed) -> Any:
        """The batch's reply routes; None (the topic answers) if reading them fails: a
        header must never cost the batch its commands."""
        assert self._replier is not None
        try:
            return self._replier.routes(parsed.commands)
        except Exception:
            log.exception("reading a batch's reply headers failed; the outcome records answer")
            return None

    async def drain(self) -> bool:
        """Complete the batch being stored and wait until nothing is being published
        (before a rebalance or a shutdown). Returns False if that batch failed (it is
        consumed again); the publishing's result is left to `published`."""
        async with self._lock:
            done = await self._complete_storing()
            self._seek_back_alone(done)
        await self._publishing.wait()
        await self._offsets.flush()
        return not done.seek

    async def published(self) -> bool:
        """After `drain`: whether the last batch's publishing succeeded."""
        return not await self._publishing.result()

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions this instance no longer owns: their next owner starts from the
        committed offsets, so no fence is kept for them."""
        for tp in partitions:
            self._fences.pop(tp, None)

    # --- phase transitions ---------------------------------------------------------

    def _enter(self, batch: Batch, phase: Phase) -> None:
        if phase is not Phase.FAILED and phase not in _NEXT[batch.phase]:
            raise RuntimeError(f"a batch cannot go from {batch.phase.value} to {phase.value}")
        batch.phase = phase
        if self._observe is not None:
            self._observe(batch, phase)

    def _decided(self, batch: Batch, decision: Decision) -> None:
        batch.decision = decision
        self._enter(batch, Phase.DECIDED)

    def _start_storing(self, batch: Batch) -> None:
        assert batch.decision is not None
        batch.storing = asyncio.create_task(self._store(batch))
        self._enter(batch, Phase.STORING)
        self._storing = batch
        completer = asyncio.create_task(self._complete_when_stored(batch))
        self._completers.add(completer)
        completer.add_done_callback(self._completers.discard)

    async def _store(self, batch: Batch) -> StoredRound:
        """Store the batch; when it went in whole, its direct replies go out at once."""
        assert batch.decision is not None
        stored = await self._processor.store(batch.decision.round)
        if stored.went_in_whole and batch.reply_routes is not None:
            self._reply_stored(batch, stored)
        return stored

    def _reply_stored(self, batch: Batch, stored: StoredRound) -> None:
        """Send a batch's outcomes as soon as its store went in whole, without the lock:
        nothing was refused, so its answers are the decided ones (what `complete` answers
        then, the same objects) and they are final. They go before the batch's completion,
        which waits for the lock (the next batch's decision may hold it)."""
        assert self._replier is not None
        answers = [stored.decided[i] for i in stored.answered]
        encoded: dict[int, bytes] = {}
        try:
            self._replier.send(
                batch.reply_routes,
                [d.outcome for d in answers if d.outcome is not None],
                [d.commit for d in answers if d.commit is not None],
                encoded,
            )
        except Exception:
            log.exception("direct replies failed; the outcome records will answer")
        batch.reply_routes = None
        batch.encoded = encoded

    async def _complete_storing(self, then_store: Batch | None = None) -> _Handover:
        """Wait for the batch being stored (call with the lock held), complete it and
        hand it to the publish stage. `then_store`'s store starts as soon as that batch
        is known stored as decided, with nothing failed before it, before its answers
        are built."""
        batch = self._storing
        if batch is None:
            return _Handover()
        assert batch.storing is not None
        assert batch.decision is not None
        # Not `await batch.storing`: cancelling this wait must not cancel the store, which
        # stays `_storing` for its background completion.
        await asyncio.wait({batch.storing})
        self._storing = None
        try:
            stored = batch.storing.result()
            self._enter(batch, Phase.STORED)
            known_failed = self._publishing.known_failed()
            if then_store is not None and stored.went_in_whole and not known_failed:
                self._start_storing(then_store)
            completed = await self._processor.complete(batch.decision, stored)
        except Exception:
            log.exception(
                "storing a batch of %d commands failed; it will be consumed again",
                len(batch.positions),
            )
            self._processor.forget(batch.decision.parsed)
            return self._failed(batch, await self._publishing.result())
        if batch.reply_routes is not None and self._replier is not None:
            # Stored and completed: the answers are true whatever happens to the batch
            # before's publish (were it to fail, this batch's stored commits and outcomes
            # are re-published on redelivery, and the API skips what it no longer awaits).
            try:
                out = completed.out
                self._replier.send(batch.reply_routes, out.outcomes, out.commits, out.encoded)
            except Exception:
                log.exception("direct replies failed; the outcome records will answer")
            batch.reply_routes = None
        elif batch.encoded:
            completed.out.encoded.update(batch.encoded)
        if failed := await self._publishing.result():
            # The batch before was not published, so this one (stored, but to be
            # published after it) is not either: both are consumed again, and their
            # stored commits re-published.
            return self._failed(batch, failed)
        # What it decided is answered in `completed.out`: let the rest go now rather than
        # keep it alive while the batch is published.
        batch.decision, batch.storing, batch.encoded = None, None, None
        self._enter(batch, Phase.PUBLISHING)
        self._publishing.start(batch.start, self._publish_and_commit(batch, completed.out))
        return _Handover(redecided=completed.redecided)

    def _failed(self, batch: Batch, seek_before: dict[TopicPartition, int]) -> _Handover:
        self._enter(batch, Phase.FAILED)
        return _Handover(True, earliest_of(seek_before, batch.start), batch.consumer)

    async def _publish_and_commit(self, batch: Batch, out: Outbound) -> None:
        try:
            await self._publish(out)
        except BaseException:
            self._enter(batch, Phase.FAILED)
            raise
        await self._offsets.commit(batch.consumer, following(batch.positions))
        self._enter(batch, Phase.COMMITTED)

    async def _abandon_storing(self, batch: Batch) -> None:
        """Wait out `batch`'s store, if it started: the batch is consumed again anyway."""
        if self._storing is not batch or batch.storing is None:
            return
        self._storing = None
        await asyncio.wait({batch.storing})
        if not batch.storing.cancelled() and batch.storing.exception() is not None:
            log.warning("an abandoned batch's store failed too", exc_info=batch.storing.exception())

    async def _complete_when_stored(self, batch: Batch) -> None:
        """Complete a batch no later batch came to complete, and take its publishing's
        result if no later batch does: a failed publish is then sought back without
        waiting for one."""
        assert batch.storing is not None
        await asyncio.wait({batch.storing})
        async with self._lock:
            if self._storing is not batch:
                return  # the next batch completed it already
            self._seek_back_alone(await self._complete_storing())
            publishing = self._publishing.in_flight
        if publishing is None:
            return
        await asyncio.wait({publishing})
        async with self._lock:
            if self._publishing.in_flight is publishing and self._storing is None:
                failed = await self._publishing.result()
                self._seek_back_alone(_Handover(True, failed, batch.consumer))

    # --- seeking back --------------------------------------------------------------

    def _seek_back_alone(self, done: _Handover) -> None:
        """Seek back outside `submit`: fence the partitions (see `_fenced_off`)."""
        if done.seek and done.consumer is not None:
            for tp, offset in done.seek.items():
                self._fences[tp] = min(self._fences.get(tp, offset), offset)
            seek_back(done.consumer, done.seek)

    def _fenced_off(self, consumer: Consumer, positions: Sequence[Position]) -> bool:
        """Whether this batch was fetched before a background seek: drop it and seek its
        partitions back again. A batch from the fence (or before) lifts it."""
        if not self._fences:
            return False
        first = earliest(positions)
        stale = any(offset > self._fences.get(tp, offset) for tp, offset in first.items())
        if stale:
            log.info("dropping a batch fetched before its partitions were sought back")
            seek_back(consumer, self._fences, first)
            return True
        for tp in first:
            self._fences.pop(tp, None)
        return False


class _CoalescedCommits:
    """Offset commits at most every `every_s` seconds (0: each at once).

    A commit is a Kafka request (about half a millisecond of the broker's CPU here); at
    a worker's few commands per batch there is one per batch. Offsets queued meanwhile
    are merged (the later offset of a partition wins: batches are published in order)
    and go in one request, from a timer or with the next batch after the interval.
    `flush` commits what is queued at once (before a rebalance or a shutdown).
    """

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._queued: dict[TopicPartition, int] = {}
        self._consumer: Consumer | None = None
        # Never committed: the first commit goes at once. (Not 0.0: the monotonic clock
        # counts from boot, so within `every_s` of it the first commit used to wait.)
        self._last = -math.inf
        self._timer: asyncio.Task[None] | None = None
        # One commit request at a time, so that a later one never lands first.
        self._lock = asyncio.Lock()

    async def commit(self, consumer: Consumer, offsets: dict[TopicPartition, int]) -> None:
        if self._every_s <= 0:
            await commit_offsets(consumer, offsets)
            return
        if self._consumer is not None and self._consumer is not consumer:
            await self.flush()  # a new consumer: what the old one consumed goes first
        self._consumer = consumer
        for tp, offset in offsets.items():
            self._queued[tp] = max(self._queued.get(tp, offset), offset)
        wait = self._last + self._every_s - time.monotonic()
        if wait <= 0:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_after(wait))

    async def flush(self) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()  # it only sleeps: commits happen under the lock
        self._timer = None
        async with self._lock:
            if not self._queued or self._consumer is None:
                return
            queued, self._queued = self._queued, {}
            self._last = time.monotonic()
            if not await commit_offsets(self._consumer, queued) and len(queued) > 1:
                # One refused partition (revoked after its batch was queued) fails the
                # whole request: the partitions still owned are committed one by one, or
                # an idle one would keep its old offset and have its batches re-published.
                for tp, offset in queued.items():
                    await commit_offsets(self._consumer, {tp: offset})

    async def _flush_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._timer = None
        await self.flush()
