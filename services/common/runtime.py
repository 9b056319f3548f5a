"""Process-wide tuning every long-running service applies once its app is built."""

from __future__ import annotations

import gc
import logging
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
    the survivors frozen again), which `check` runs:

    - when the frozen heap has grown by `growth` (25%, CPython's own rule for its oldest
      generation) since the last full collection: this bounds what cycles can hold, e.g.
      the batches a failing store or publish leaves in exception/traceback cycles
      (~14 MB per failed batch of 2,000);
    - every `full_every_s` seconds in any case.

    Why: a batch allocates a few hundred tracked objects per command, alive until it is
    published; collections by allocation count traverse them again and again while they
    are alive. Batches that go through create no cycles. A full collection logs what it
    found and how long it took. Measurements: docs/engine-performance.md, "Garbage
    collection".
    """

    def __init__(
        self,
        full_every_s: float = 600.0,
        growth: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._full_every_s = full_every_s
        self._growth = growth
        self._clock = clock
        self._last_full = clock()
        self._frozen_after_full = 0

    def start(self) -> None:
        tune_gc()  # again: what start-up allocated since is out of sight too
        gc.disable()
        self._last_full = self._clock()
        self._frozen_after_full = gc.get_freeze_count()

    def after_batch(self) -> None:
        gc.freeze()

    def check(self) -> bool:
        """Run a full collection if one is due (by time or growth); call it every few
        seconds. Counting the frozen objects walks them (see docs/engine-performance.md)."""
        gc.freeze()
        due = self._clock() - self._last_full >= self._full_every_s
        if due or gc.get_freeze_count() > self._frozen_after_full * (1 + self._growth):
            self.collect_all()
            return True
        return False

    def collect_all(self) -> int:
        """A full collection over everything, frozen or not; returns what it freed."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._last_full = self._clock()
        self._frozen_after_full = gc.get_freeze_count()
        log.info(
            "full collection: %d unreachable objects, %.0f ms, %d objects tracked",
            found,
            (time.perf_counter() - started) * 1000,
            self._frozen_after_full,
        )
        return found

    def stop(self) -> None:
        """Back to automatic collection (for tests, and a process that lives on)."""
        gc.unfreeze()
        gc.enable()
