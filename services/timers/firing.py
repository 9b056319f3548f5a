"""The timers service's core: events in → timers stored; due timers → commands out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from schemas.commands import COMMAND_ADAPTER
from schemas.events import Event
from schemas.timers import firing_command, timer_changes
from services.common.clock import now_ns, utcnow
from services.common.kafka_io import Outgoing, RecordPublisher
from services.timers.pending import PendingTimers, Placed, Writes
from services.timers.stats import TimerStats
from services.timers.timer_store import TimerStore

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0


class TimerService:
    def __init__(
        self,
        store: TimerStore,
        publisher: RecordPublisher,
        commands_topic: str,
        tick_seconds: float,
        fire_batch: int,
    ) -> None:
        self.store = store
        self.pending = PendingTimers()
        self.stats = TimerStats()
        self._publisher = publisher
        self._commands_topic = commands_topic
        self._tick = tick_seconds
        self._fire_batch = fire_batch
        self._wake = asyncio.Event()
        self._fired_keys: list[str] = []
        self._fired_wake = asyncio.Event()

    # --- partitions -------------------------------------------------------------------

    async def assign(self, partitions: Iterable[int]) -> None:
        """Load the stored timers of newly owned partitions, retrying until the store
        answers: events of these partitions are not consumed before (the rebalance
        listener is awaited first), so none of their timers can be missed."""
        wanted = [p for p in partitions if p not in self.pending.partitions]
        if not wanted:
            return
        while True:
            try:
                loaded = await self.store.load(wanted)
                break
            except Exception:
                log.exception("loading the timers of partitions %s failed; retrying", wanted)
                await asyncio.sleep(_RETRY_SECONDS)
        for partition, timers in loaded.items():
            self.pending.assign(partition, timers)
        log.info(
            "assigned partitions %s: %d timers loaded",
            wanted,
            sum(len(t) for t in loaded.values()),
        )
        self._wake.set()

    def revoke(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.pending.revoke(partition)

    # --- events -----------------------------------------------------------------------

    async def apply(self, events: Iterable[tuple[int, Event]]) -> None:
        """Apply a batch of (partition, event); returns once its timers are stored, so the
        caller may commit the batch's offsets. Re-applying a batch is harmless."""
        writes = Writes(put={}, delete=set())
        before = len(self.pending)
        started = 0
        for partition, event in events:
            changes = timer_changes(event)
            if not changes.empty:
                started += len(changes.start)
                self.pending.apply(partition, event.execution_id, event.run_id, changes, writes)
        dropped = before + started - len(self.pending)
        if dropped > 0:
            self.stats.dropped_total += dropped
        self.stats.set_pending(len(self.pending), self.pending.next_fire_ns())
        if writes.put or writes.delete:
            await self.store.write(writes.put.values(), writes.delete)
            self._wake.set()

    # --- firing -----------------------------------------------------------------------

    async def run_firing(self) -> None:
        """Fire due timers until cancelled (and delete fired ones from the store alongside)."""
        deleting = asyncio.create_task(self._run_deleting(), name="timers-delete")
        try:
            await self._fire_forever()
        finally:
            deleting.cancel()

    async def _run_deleting(self) -> None:
        """Deletes fired timers from the store, off the firing path: FerretDB's deletes are
        slow, and a fired timer still stored is only fired again (same command id) after a
        reload, which the engine applies once."""
        while True:
            await self._fired_wake.wait()
            self._fired_wake.clear()
            keys, self._fired_keys = self._fired_keys, []
            try:
                await self.store.write((), keys)
            except Exception:
                log.warning("deleting %d fired timers failed; retrying", len(keys), exc_info=True)
                self._fired_keys.extend(keys)
                self._fired_wake.set()
                await asyncio.sleep(_RETRY_SECONDS)

    async def _fire_forever(self) -> None:
        while True:
            try:
                fired = await self.fire_due()
            except Exception:
                log.exception("firing timers failed; retrying")
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            if fired:
                self.refresh_stats()
                continue  # a backlog: go on at once
            self._wake.clear()
            next_ns = self.pending.next_fire_ns()
            wait = self._tick
            if next_ns is not None:
                wait = min(wait, max(0.0, (next_ns - now_ns()) / 1e9))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def fire_due(self) -> int:
        """Send the commands of due timers, then forget them and queue their deletion from
        the store.

        A crash after the send and before the delete fires them again after a restart with
        the same command ids, which the engine applies once."""
        due = self.pending.due(now_ns(), self._fire_batch)
        if not due:
            return 0
        issued_at = utcnow()
        records = []
        sendable: list[Placed] = []
        for placed in due:
            try:
                command = firing_command(placed.timer, issued_at)
            except ValueError as exc:  # a timer id the command refuses: report, never block
                log.error("timer %s cannot be fired; dropped: %s", placed.timer.key, exc)
                if self.pending.fired(placed):
                    self._fired_keys.append(placed.timer.key)
                continue
            sendable.append(placed)
            records.append(
                Outgoing(
                    self._commands_topic, command.execution_id, COMMAND_ADAPTER.dump_json(command)
                )
            )
        try:
            await self._publisher.publish_batches(records)
        except Exception:
            for placed in sendable:
                self.pending.retry(placed)
            raise
        sent_ns = now_ns()
        done = []
        for placed in sendable:
            self.stats.record_firing((sent_ns - placed.timer.fire_at_ns) / 1e9)
            if self.pending.fired(placed):
                done.append(placed.timer.key)
        self._fired_keys.extend(done)
        self._fired_wake.set()
        return len(sendable)

    def refresh_stats(self) -> TimerStats:
        self.stats.set_pending(len(self.pending), self.pending.next_fire_ns())
        return self.stats
