"""Process-wide tuning every long-running service applies once its app is built."""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# CPython's defaults (700, 10, 10) collect the youngest generation every 700 net
# allocations and, as the heap grows, scan all of it again and again. The projector and
# the API collect with these thresholds; the engine goes further (`BatchCollector`).
# Measurements: docs/engine-performance.md, "Garbage collection".
GC_THRESHOLDS = (20_000, 20, 10)


def tune_gc() -> None:
    """Move everything allocated so far (modules, schemas, the built app) out of the
    collector's sight, and collect the young generation less often.

    Objects frozen here live as long as the process anyway; refcounting still frees
    whatever of them is released, and only reference cycles among them are never
    collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class BatchCollector:
    """The engine's cyclic garbage collection, driven by its batches instead of by
    allocation counts.

    Automatic collection is off. After each batch, what is alive is frozen (moved out of
    the collector's generations: O(1)), so no object is traversed again and again; freed
    objects still go at once by reference counting, frozen or not. Only garbage in
    reference cycles waits, for a full collection (everything unfrozen, collected, and
    the survivors frozen again), which `check` runs when one is due:

    - before the first batch (`before_batch`), or at the first check (5 s after start)
      if no batch came by then: start-up leaves cycles, e.g. an exception of aiokafka's
      first coordinator lookup holding three sockets. Before the first batch the heap is
      the started app alone; at the first check of a busy engine it held the states and
      batches of 5 s of commands, and the collection stopped the engine for 0.3 to 0.7 s;
    - after a failed batch (`batch_failed`): the one known source of cycles. A store or
      publish that fails leaves its batch in an exception/traceback cycle (~14 MB per
      failed batch of 2,000), so what failing batches hold is bounded by the failures
      of one check interval (the pipeline backs off between them);
    - when the heap has grown by `growth` (25%, CPython's rule for its oldest
      generation) since the last full collection, not counting the state cache's
      growth: a backstop for cycles from elsewhere. Heap growth during a check interval
      in which `cache_entries()` grew is the cache's. Counted as garbage, it reran a
      full collection over the whole cache again and again while the cache filled
      (12-16% of the engine's CPU in a drain, and pauses of ~0.5 s under steady load).
      The heap is counted with `sys.getallocatedblocks()`: a walk over memory pools
      (~4 ms per million blocks), not over the objects as `gc.get_freeze_count()` is;
    - every `full_every_s` seconds in any case.

    Why: a batch allocates a few hundred tracked objects per command, alive until it is
    published; collections by allocation count traverse them again and again while they
    are alive. Batches that go through create no cycles. A full collection logs why it
    ran, what it found and how long it took. Measurements: docs/engine-performance.md,
    "Garbage collection".
    """

    def __init__(
        self,
        full_every_s: float = 600.0,
        growth: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        cache_entries: Callable[[], int] = lambda: 0,
    ) -> None:
        self._full_every_s = full_every_s
        self._growth = growth
        self._clock = clock
        self._cache_entries = cache_entries
        self._last_full = clock()
        self._failed = 0
        self._collected = False
        self._baseline = 0
        """The heap after the last full collection, plus the cache's growth since."""
        self._heap_at_check = 0
        self._entries_at_check = 0

    def start(self) -> None:
        tune_gc()  # again: what start-up allocated since is out of sight too
        gc.disable()
        self._after_full()

    def before_batch(self) -> None:
        """A batch came: the start-up collection, if it has not run yet."""
        if not self._collected:
            self.collect_all("start-up")

    def after_batch(self) -> None:
        gc.freeze()

    def batch_failed(self) -> None:
        """A batch failed (it is consumed again): the next `check` collects."""
        self._failed += 1

    def due(self) -> str | None:
        """Why a full collection is due, or None. Call it every few seconds: it
        attributes the heap's growth since the last call to the cache if it grew."""
        heap, entries = sys.getallocatedblocks(), self._cache_entries()
        if entries > self._entries_at_check:
            self._baseline += heap - self._heap_at_check
        self._heap_at_check, self._entries_at_check = heap, entries
        if not self._collected:
            return "start-up"
        if self._failed:
            return f"{self._failed} failed batches"
        if self._clock() - self._last_full >= self._full_every_s:
            return "time"
        if heap > self._baseline * (1 + self._growth):
            return "growth"
        return None

    def check(self) -> bool:
        """Run a full collection if one is due; call it every few seconds."""
        gc.freeze()
        reason = self.due()
        if reason is None:
            return False
        self.collect_all(reason)
        return True

    def collect_all(self, reason: str = "asked") -> int:
        """A full collection over everything, frozen or not; returns what it freed."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._after_full()
        self._collected = True
        log.info(
            "full collection (%s): %d unreachable objects, %.0f ms, %d memory blocks, "
            "%d cached states",
            reason,
            found,
            (time.perf_counter() - started) * 1000,
            self._baseline,
            self._entries_at_check,
        )
        return found

    def _after_full(self) -> None:
        self._last_full = self._clock()
        self._failed = 0
        self._baseline = self._heap_at_check = sys.getallocatedblocks()
        self._entries_at_check = self._cache_entries()

    def stop(self) -> None:
        """Back to automatic collection (for tests, and a process that lives on)."""
        gc.unfreeze()
        gc.enable()
