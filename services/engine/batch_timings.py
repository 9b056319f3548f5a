"""Where a consumed batch's time goes in the engine: a pipeline observer that times each
phase and records it in `runstore_engine_batch_stage_seconds` (by stage).

Stages, in a batch's order (services/engine/pipeline.py):

- `fetch`: the batch's newest record's timestamp (set by its producer when the record was
  appended to a produce batch: the API's command window, a worker) to the handler. It
  holds the rest of the producer's window, the produce, the engine's fetch wait and the
  hand-over through FastStream. Producer and engine clocks are one clock on one host; on
  several hosts it also holds their skew (clamped at 0).
- `decide`: the handler to the batch decided (parsing, loading states, deciding).
- `wait`: decided to its store started (the batch before being stored).
- `store`: the store (MongoDB's insert round trip).
- `complete`: stored to its publishing started (answers built; the publish before).
- `publish`: publishing to committed (records built and acknowledged, offsets queued).

Observing costs a few microseconds per batch (one clock read and one histogram observe
per phase): the engine's CPU per batch is a millisecond or more.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.common.metrics import ENGINE_BATCH_STAGE
from services.engine.pipeline import Batch, Phase

_STAGES: dict[Phase, str] = {
    Phase.DECIDED: "decide",
    Phase.STORING: "wait",
    Phase.STORED: "store",
    Phase.PUBLISHING: "complete",
    Phase.COMMITTED: "publish",
}


class BatchTimings:
    """Call with every phase a batch enters (`EnginePipeline`'s `observe`)."""

    def __init__(self, observe: Callable[[str, float], None] | None = None) -> None:
        """`observe(stage, seconds)`: where to record (the histogram by default)."""
        self._observe = observe or self._to_histogram
        self._children = {stage: ENGINE_BATCH_STAGE.labels(stage) for stage in _STAGES.values()}
        self._children["fetch"] = ENGINE_BATCH_STAGE.labels("fetch")
        # A batch's last phase and when it entered it (perf_counter); batches in flight.
        self._last: dict[int, tuple[Phase, float]] = {}

    def _to_histogram(self, stage: str, seconds: float) -> None:
        self._children[stage].observe(seconds)

    def __call__(self, batch: Batch, phase: Phase) -> None:
        now = time.perf_counter()
        key = id(batch)
        last = self._last.get(key)
        if phase is Phase.FAILED or phase is Phase.COMMITTED:
            self._last.pop(key, None)
        else:
            self._last[key] = (phase, now)
        if phase is Phase.FAILED:
            return
        if last is None:
            if phase is not Phase.DECIDED:
                return  # entered before this observer saw it: nothing to time against
            newest = max((getattr(p, "timestamp", 0) or 0 for p in batch.positions), default=0)
            if newest > 0:
                self._observe("fetch", max(batch.received_at - newest / 1000, 0.0))
            self._observe("decide", max(now - batch.received_perf, 0.0))
            return
        if last[0] is phase:
            return  # decided again: the first decision's time stands
        self._observe(_STAGES[phase], now - last[1])
