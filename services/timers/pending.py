"""The pending timers of the partitions this instance owns, in memory: a heap per partition.

Pure bookkeeping, no I/O. The store holds the same timers durably; this is what finds the
due ones on every tick without reading the store (FerretDB answers anything but an `_id`
read with a scan, docs/timers.md). Heaps are rebuilt from the store once per assignment.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from schemas.timers import Timer, TimerChanges, timer_key


@dataclass(frozen=True, slots=True)
class Placed:
    """A timer and the events partition it belongs to (the partition of its execution)."""

    partition: int
    timer: Timer


@dataclass(slots=True)
class Writes:
    """What the store must do after an event batch: upsert these timers, delete these keys."""

    put: dict[str, Placed]
    delete: set[str]

    def merge_put(self, placed: Placed) -> None:
        self.delete.discard(placed.timer.key)
        self.put[placed.timer.key] = placed

    def merge_delete(self, key: str) -> None:
        self.put.pop(key, None)
        self.delete.add(key)


class PendingTimers:
    def __init__(self) -> None:
        self._by_key: dict[str, Placed] = {}
        self._by_run: dict[tuple[str, str], set[str]] = {}
        # Entries (fire_at_ns, key); an entry whose key is gone or was re-armed at another
        # time is stale and skipped when it surfaces (lazy deletion).
        self._heaps: dict[int, list[tuple[int, str]]] = {}

    # --- ownership --------------------------------------------------------------------

    @property
    def partitions(self) -> frozenset[int]:
        return frozenset(self._heaps)

    def assign(self, partition: int, timers: list[Timer]) -> None:
        """Take over a partition with the timers the store holds for it."""
        self.revoke(partition)
        self._heaps[partition] = []
        for timer in timers:
            self._add(Placed(partition, timer))

    def revoke(self, partition: int) -> None:
        """Forget a partition: its new owner loads its timers from the store."""
        if self._heaps.pop(partition, None) is None:
            return
        # By key, not by heap entry: a timer being fired right now is in no heap.
        for key in [k for k, p in self._by_key.items() if p.partition == partition]:
            self._remove(key)

    # --- events -----------------------------------------------------------------------

    def apply(
        self, partition: int, execution_id: str, run_id: str, changes: TimerChanges, writes: Writes
    ) -> None:
        """Apply one event's timer changes; record the store writes they need in `writes`."""
        if partition not in self._heaps:
            return  # not ours (revoked while the batch was in flight): the owner applies it
        for closed in changes.close_runs:
            for key in list(self._by_run.get((execution_id, closed), ())):
                self._remove(key)
                writes.merge_delete(key)
        for timer_id in changes.stop:
            key = timer_key(execution_id, run_id, timer_id)
            self._remove(key)
            writes.merge_delete(key)
        for timer in changes.start:
            placed = Placed(partition, timer)
            self._add(placed)
            writes.merge_put(placed)

    # --- firing -----------------------------------------------------------------------

    def due(self, now_ns: int, limit: int) -> list[Placed]:
        """Pop up to `limit` timers due at `now_ns`, earliest first per partition. They stay
        pending until `fired` (or go back with `retry`)."""
        out: list[Placed] = []
        for heap in self._heaps.values():
            while heap and heap[0][0] <= now_ns and len(out) < limit:
                fire_at, key = heapq.heappop(heap)
                placed = self._by_key.get(key)
                if placed is not None and placed.timer.fire_at_ns == fire_at:
                    out.append(placed)
        return out

    def fired(self, placed: Placed) -> bool:
        """Record a firing; False when the timer changed meanwhile (re-armed or stopped)."""
        current = self._by_key.get(placed.timer.key)
        if current is None or current.timer != placed.timer:
            return False
        self._remove(placed.timer.key)
        return True

    def retry(self, placed: Placed) -> None:
        """A firing that could not be sent goes back into its heap."""
        heap = self._heaps.get(placed.partition)
        if heap is not None and self._by_key.get(placed.timer.key) == placed:
            heapq.heappush(heap, (placed.timer.fire_at_ns, placed.timer.key))

    # --- operators --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_key)

    def next_fire_ns(self) -> int | None:
        """The earliest pending fire time (stale heap heads are dropped on the way)."""
        best: int | None = None
        for heap in self._heaps.values():
            while heap:
                fire_at, key = heap[0]
                placed = self._by_key.get(key)
                if placed is not None and placed.timer.fire_at_ns == fire_at:
                    break
                heapq.heappop(heap)
            if heap and (best is None or heap[0][0] < best):
                best = heap[0][0]
        return best

    # --- internals --------------------------------------------------------------------

    def _add(self, placed: Placed) -> None:
        timer = placed.timer
        heap = self._heaps.get(placed.partition)
        if heap is None:
            return
        if timer.key in self._by_key:
            self._remove(timer.key)
        self._by_key[timer.key] = placed
        self._by_run.setdefault((timer.execution_id, timer.run_id), set()).add(timer.key)
        heapq.heappush(heap, (timer.fire_at_ns, timer.key))

    def _remove(self, key: str) -> None:
        placed = self._by_key.pop(key, None)
        if placed is None:
            return
        run = (placed.timer.execution_id, placed.timer.run_id)
        keys = self._by_run.get(run)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_run[run]
