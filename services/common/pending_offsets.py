"""Offset commits, coalesced: the offsets of handled batches are committed at most every
so often, not after each batch. Used by the worker (`RUNSTORE_WORKER_COMMIT_EVERY_MS`)
and the timers service (`RUNSTORE_TIMERS_COMMIT_EVERY_MS`).

At a few records per batch an offset commit is a third of a consumer's Kafka requests (a
fetch, a produce and a commit per batch), and every commit writes one record per
partition it names to `__consumer_offsets`. What is pending is committed when it is due,
when the consumer is idle, before partitions are revoked and on shutdown. A crash
redelivers the records handled since the last commit, so only consumers whose handling
is idempotent use this: the worker (replay: a redelivered task computes the same command
id, which the engine applies once; docs/workers.md, "Durable execution: what survives
what") and the timers (a timer stored or deleted twice is the same timer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from aiokafka import TopicPartition

log = logging.getLogger(__name__)


class OffsetCommitter(Protocol):
    """What of an aiokafka consumer the commits need."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...


class PendingOffsets:
    """Offsets (next record to read, per partition) of batches handled and not committed."""

    def __init__(
        self,
        consumer: OffsetCommitter | None,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`consumer` may be set later (`consumer` attribute), before the first commit."""
        self.consumer = consumer
        self._every = every_seconds
        self._clock = clock
        self._pending: dict[TopicPartition, int] = {}
        self._last = clock()
        # One commit at a time: two in flight (the handler's and the background loop's)
        # could land out of order, and a failed earlier one would put back offsets below
        # what a later one committed.
        self._committing = asyncio.Lock()

    @property
    def pending(self) -> Mapping[TopicPartition, int]:
        return self._pending

    def add(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A batch was handled (what it implies is durable): these offsets may be committed."""
        for tp, offset in offsets.items():
            if offset > self._pending.get(tp, -1):
                self._pending[tp] = offset

    async def commit_if_due(self) -> None:
        """Commit what is pending if the last commit is `every_seconds` old (0: always)."""
        if self._pending and self._clock() - self._last >= self._every:
            await self.commit()

    async def commit(self) -> bool:
        """Commit everything pending now; False if the commit failed.

        A failed commit (partitions revoked meanwhile, the broker unreachable) is logged
        and the offsets of partitions still assigned stay pending for the next one (unless a
        later batch moved them on): a failure costs redelivered records, never a stopped
        consumer."""
        async with self._committing:
            return await self._commit_pending()

    async def _commit_pending(self) -> bool:
        if not self._pending:
            return True
        consumer = self.consumer
        assert consumer is not None, "no consumer to commit with"
        # Only partitions still assigned: aiokafka refuses a whole commit that names one it
        # no longer has (a batch handled while a rebalance took it), and that partition's
        # new owner starts from its last committed offset anyway.
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in self._pending.items() if tp in assigned}
        self._pending = {}
        self._last = self._clock()
        if not offsets:
            return True
        try:
            await consumer.commit(offsets)
        except BaseException as exc:
            # Cancelled too (a stopping loop): what was not committed stays pending for
            # the shutdown's or the revoke's commit.
            assigned = consumer.assignment()
            for tp, offset in offsets.items():
                if tp in assigned:
                    self._pending.setdefault(tp, offset)
            if not isinstance(exc, Exception):
                raise
            log.warning("committing offsets failed (%r); they stay pending", exc)
            return False
        return True

    async def revoke(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions are about to move: commit what is pending (still their owner), then
        forget theirs (their new owner starts from the last committed offsets)."""
        await self.commit()
        for tp in partitions:
            self._pending.pop(tp, None)
