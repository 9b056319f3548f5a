"""The engine's batches in three overlapping stages, with offsets committed in order.

A batch is decided (engine CPU), stored (MongoDB), then published (Kafka) before its
offsets are committed. Done strictly in turn, each server waits for the others most of
the time. `EnginePipeline` overlaps them:

    decide N+1   ||   store N   ||   publish N-1

- N+1 is decided against the cached states as N left them, before N is stored. If N's
  store turns out differently (a start whose execution existed, a seq another writer
  took), N is finished with reads and N+1 is forgotten and decided again.
- Appends go in batch order: N+1's store starts only after N is finished.
- At most one batch is being published (`PublishPipeline`); N+1's publishing starts only
  after N's has finished, so the records of one key keep their order across batches.
- N's offsets are committed only after everything it implies is acknowledged.
- If N's publishing fails, N+1 is stored but not published either: both are sought
  back, and their redelivery re-publishes the stored commits without deciding again
  (the processor recognises a record by its source offset). A failed store or decision
  seeks back in the same way.
- When no batch follows, a finisher completes the stored batch on its own, so a lone
  batch is not left waiting for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import TopicPartition

from services.engine.processor import InboundRecord, Outbound, Plan

log = logging.getLogger(__name__)


class Consumer(Protocol):
    """What the pipeline needs of `AIOKafkaConsumer`."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...


class Position(Protocol):
    """A consumed record's place (an aiokafka `ConsumerRecord` is one)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


def earliest(records: Iterable[Position]) -> dict[TopicPartition, int]:
    """Per partition, the first offset of a batch: where to seek to consume it again."""
    first: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    return first


def following(records: Iterable[Position]) -> dict[TopicPartition, int]:
    """Per partition, the offset after a batch's last record: what to commit."""
    after: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        after[tp] = max(after.get(tp, 0), r.offset + 1)
    return after


def _merge(*starts: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Per partition, the earliest of the given positions."""
    merged: dict[TopicPartition, int] = {}
    for start in starts:
        for tp, offset in start.items():
            merged[tp] = min(merged.get(tp, offset), offset)
    return merged


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[None]
    first: dict[TopicPartition, int]


class PublishPipeline:
    def __init__(self) -> None:
        self._in_flight: _InFlight | None = None

    async def settle(self) -> dict[TopicPartition, int]:
        """Wait for the batch being published. Returns where to seek back to if its
        publishing failed (empty when it succeeded or nothing was in flight)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return {}
        try:
            await in_flight.task
        except Exception:
            log.exception("publishing a batch failed; it will be consumed again")
            return in_flight.first
        return {}

    def start(
        self,
        consumer: Consumer,
        batch: Iterable[Position],
        publish: Callable[[], Awaitable[None]],
    ) -> None:
        """Publish a decided and stored batch in the background, then commit its offsets.
        Call only after `settle`."""
        if self._in_flight is not None:
            raise RuntimeError("a batch is still being published; settle it first")
        positions = list(batch)
        offsets = following(positions)

        async def publish_then_commit() -> None:
            await publish()
            try:
                await consumer.commit(offsets)
            except Exception:
                # Typically the partitions were revoked meanwhile: their new owner starts
                # from the last committed offsets and re-publishes from the store.
                log.warning("could not commit offsets %s", offsets, exc_info=True)

        self._in_flight = _InFlight(asyncio.create_task(publish_then_commit()), earliest(positions))

    def current(self) -> asyncio.Task[None] | None:
        """The publish in flight (or finished but not settled yet), if any."""
        return self._in_flight.task if self._in_flight is not None else None

    def clear(self) -> bool:
        """Nothing is being published, or what was has been acknowledged."""
        in_flight = self._in_flight
        if in_flight is None:
            return True
        task = in_flight.task
        return task.done() and not task.cancelled() and task.exception() is None

    async def drain(self) -> None:
        """Wait until nothing is being published (before a rebalance or a shutdown); the
        outcome is still reported by the next `settle`."""
        if self._in_flight is not None:
            await asyncio.wait({self._in_flight.task})

    @staticmethod
    def rewind(consumer: Consumer, *starts: Mapping[TopicPartition, int]) -> None:
        """Seek each partition back to the earliest of the given positions."""
        for tp, offset in _merge(*starts).items():
            try:
                consumer.seek(tp, offset)
            except Exception:
                # Revoked meanwhile: the new owner starts from the committed offset.
                log.warning("could not seek %s back to %d", tp, offset, exc_info=True)


class Stages(Protocol):
    """The processor's stages (`services.engine.processor.CommandProcessor`)."""

    async def decide(
        self,
        records: Sequence[InboundRecord],
        settle: Callable[[], Awaitable[object]] | None = None,
    ) -> Plan: ...

    async def store(self, plan: Plan) -> None: ...

    async def finish(self, plan: Plan) -> Outbound: ...

    def forget(self, plan: Plan) -> None: ...


@dataclass(slots=True)
class _Storing:
    plan: Plan
    task: asyncio.Task[None]
    consumer: Consumer
    positions: list[Position]


@dataclass(frozen=True, slots=True)
class _Finished:
    changed: bool = False
    """The finished batch was decided again in part: batches decided before are stale."""
    rewind: dict[TopicPartition, int] = field(default_factory=dict)
    """Non-empty when it failed: where to consume again from (it, and what follows)."""
    consumer: Consumer | None = None


class EnginePipeline:
    def __init__(
        self,
        stages: Stages,
        publish: Callable[[Outbound], Awaitable[None]],
        backoff_seconds: float,
    ) -> None:
        self._stages = stages
        self._publish = publish
        self._backoff = backoff_seconds
        self._publishing = PublishPipeline()
        # Held while a batch is decided or finished: the cached states are changed by
        # both, and appends must follow batch order.
        self._lock = asyncio.Lock()
        self._storing: _Storing | None = None
        self._finishers: set[asyncio.Task[None]] = set()
        # Where a partition was sought back to outside `submit` (by a finisher or a
        # flush), while FastStream may already hold a batch fetched from further on: such
        # a batch is dropped, and the partition sought back again, until one starts there.
        self._fences: dict[TopicPartition, int] = {}

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
            finished: _Finished | None = None
            plan: Plan | None = None
            stored_early = False

            def store_now() -> None:
                nonlocal stored_early
                assert plan is not None
                stored_early = True
                self._start_storing(consumer, positions, plan)

            async def settle(then: Callable[[], None] | None = None) -> _Finished:
                nonlocal finished
                if finished is None:
                    finished = await self._finish_storing(then)
                return finished

            try:
                plan = await self._stages.decide(records, settle)
                stale = finished is None  # decided on top of the batch still being stored
                decided = time.perf_counter()
                # Once the batch before is known stored as decided, this one's store starts
                # at once, while the one before is finished and handed to publishing.
                done = await settle(store_now if stale else None)
                if stored_early and done.rewind:
                    await self._abandon_storing()
                if done.rewind:
                    # The batch before failed, and this one was decided on its states:
                    # forget it; both are consumed again.
                    self._stages.forget(plan)
                elif done.changed and stale:
                    self._stages.forget(plan)
                    plan = await self._stages.decide(records)
            except Exception:
                log.exception(
                    "deciding a batch of %d commands failed; it will be retried", len(records)
                )
                done = _Finished(True, _merge((await settle()).rewind, earliest(positions)))
                if stored_early:
                    await self._abandon_storing()
                if plan is not None:
                    self._stages.forget(plan)
            if done.rewind:
                self.rewind(consumer, done.rewind, earliest(positions))
                await asyncio.sleep(self._backoff)
                return
            if not stored_early:
                assert plan is not None  # decided, or the batch was sought back above
                self._start_storing(consumer, positions, plan)
            # Let the store send its first request now: what runs next (FastStream handing
            # over the next batch, deciding it) may not yield to the loop for a long while.
            await asyncio.sleep(0)
            log.debug(
                "batch of %d: decided in %.1f ms, then waited %.1f ms for the batch before",
                len(records),
                (decided - started) * 1000,
                (time.perf_counter() - decided) * 1000,
            )

    def _fenced_off(self, consumer: Consumer, positions: Sequence[Position]) -> bool:
        """Whether this batch was fetched before a background seek: drop it and seek its
        partitions back again. A batch from the fence (or before) lifts it."""
        if not self._fences:
            return False
        first = earliest(positions)
        stale = any(offset > self._fences.get(tp, offset) for tp, offset in first.items())
        if stale:
            log.info("dropping a batch fetched before its partitions were sought back")
            self.rewind(consumer, self._fences, first)
            return True
        for tp in first:
            self._fences.pop(tp, None)
        return False

    def _start_storing(self, consumer: Consumer, positions: Sequence[Position], plan: Plan) -> None:
        task = asyncio.create_task(self._stages.store(plan))
        storing = _Storing(plan, task, consumer, list(positions))
        self._storing = storing
        finisher = asyncio.create_task(self._finish_when_stored(storing))
        self._finishers.add(finisher)
        finisher.add_done_callback(self._finishers.discard)

    async def _abandon_storing(self) -> None:
        """Wait out a store started early whose batch is to be consumed again anyway."""
        storing, self._storing = self._storing, None
        if storing is not None:
            await asyncio.wait({storing.task})
            if not storing.task.cancelled() and storing.task.exception() is not None:
                log.warning(
                    "an abandoned batch's store failed too", exc_info=storing.task.exception()
                )

    async def flush(self) -> bool:
        """Finish the batch being stored and wait until nothing is being published (before
        a rebalance or a shutdown). Returns False if that batch failed (it is consumed
        again)."""
        async with self._lock:
            done = await self._finish_storing()
            self._rewind_alone(done)
        await self._publishing.drain()
        return not done.rewind

    def lift_fences(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions this instance no longer owns: their next owner starts from the
        committed offsets."""
        for tp in partitions:
            self._fences.pop(tp, None)

    async def settle_publishing(self) -> bool:
        """After `flush`: whether the last batch's publishing succeeded."""
        return not await self._publishing.settle()

    async def _finish_when_stored(self, storing: _Storing) -> None:
        """Finish a batch no later batch came to finish, and settle its publishing if no
        later batch does: a failed publish is then sought back without waiting for one."""
        await asyncio.wait({storing.task})
        async with self._lock:
            if self._storing is not storing:
                return  # the next batch finished it already
            self._rewind_alone(await self._finish_storing())
            publishing = self._publishing.current()
        if publishing is None:
            return
        await asyncio.wait({publishing})
        async with self._lock:
            if self._publishing.current() is publishing and self._storing is None:
                failed = await self._publishing.settle()
                self._rewind_alone(_Finished(True, failed, storing.consumer))

    def _rewind_alone(self, done: _Finished) -> None:
        """Seek back outside `submit`: fence the partitions (see `_fenced_off`)."""
        if done.rewind and done.consumer is not None:
            for tp, offset in done.rewind.items():
                self._fences[tp] = min(self._fences.get(tp, offset), offset)
            self.rewind(done.consumer, done.rewind)

    async def _finish_storing(self, then: Callable[[], None] | None = None) -> _Finished:
        """Finish the batch being stored (call with the lock held) and hand it to the
        publishing stage. `then` runs as soon as that batch is known stored as decided,
        with nothing failed before it, before its answers are built."""
        storing = self._storing
        if storing is None:
            return _Finished()
        # Not `await storing.task`: cancelling this wait must not cancel the store, which
        # stays `_storing` for its finisher.
        await asyncio.wait({storing.task})
        self._storing = None
        first = earliest(storing.positions)
        try:
            storing.task.result()
            if then is not None and storing.plan.stored_as_decided and self._publishing.clear():
                then()
            out = await self._stages.finish(storing.plan)
        except Exception:
            log.exception(
                "storing a batch of %d commands failed; it will be consumed again",
                len(storing.positions),
            )
            self._stages.forget(storing.plan)
            failed = await self._publishing.settle()
            return _Finished(True, _merge(failed, first), storing.consumer)
        if failed := await self._publishing.settle():
            # The batch before was not published, so this one (stored, but to be
            # published after it) is not either: both are consumed again, and their
            # stored commits re-published.
            return _Finished(True, _merge(failed, first), storing.consumer)
        self._publishing.start(storing.consumer, storing.positions, lambda: self._publish(out))
        return _Finished(changed=not storing.plan.clean)

    rewind = staticmethod(PublishPipeline.rewind)
