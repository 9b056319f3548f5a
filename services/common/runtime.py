"""Process-wide tuning every long-running service applies once its app is built."""

from __future__ import annotations

import gc

# CPython's defaults (700, 10, 10) collect the youngest generation every 700 net
# allocations and, as the heap grows, scan all of it again and again. The engine
# allocates a few hundred objects per command and keeps every execution's state in its
# cache: with the defaults, collections took 3.1-4.0 s of a 20,000-command benchmark
# run, with pauses up to 490 ms (bench/engine_throughput.py, gc.callbacks timing);
# with these thresholds and the start-up heap frozen, 0.86-1.0 s and at most 191 ms,
# and command→outcome p99 went from 587-915 ms to 348-389 ms.
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
