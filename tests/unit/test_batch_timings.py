"""The engine's per-batch stage timings (runstore_engine_batch_stage_seconds)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from services.engine.batch_timings import BatchTimings
from services.engine.offsets import Consumer
from services.engine.pipeline import Batch, Phase


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    timestamp: int


def test_each_phase_is_timed_from_the_one_before_and_the_fetch_from_the_newest_record() -> None:
    seen: list[tuple[str, float]] = []
    timings = BatchTimings(lambda stage, s: seen.append((stage, s)))
    now_ms = int(time.time() * 1000)
    batch = Batch(
        cast(Consumer, object()),
        [_Record("c", 0, 1, now_ms - 400), _Record("c", 1, 7, now_ms - 200)],
    )
    for phase in (
        Phase.DECIDED,
        Phase.DECIDED,  # decided again: not a stage of its own
        Phase.STORING,
        Phase.STORED,
        Phase.PUBLISHING,
        Phase.COMMITTED,
    ):
        timings(batch, phase)
    stages = [stage for stage, _ in seen]
    assert stages == ["fetch", "decide", "wait", "store", "complete", "publish"]
    fetch = dict(seen)["fetch"]
    assert 0.15 < fetch < 5  # from the newer record (200 ms ago), not the older one
    assert all(s >= 0 for _, s in seen)
    assert not cast(Any, timings)._last  # nothing kept once committed


def test_a_failed_batch_is_forgotten_and_a_batch_seen_late_is_not_timed() -> None:
    seen: list[tuple[str, float]] = []
    timings = BatchTimings(lambda stage, s: seen.append((stage, s)))
    batch = Batch(cast(Consumer, object()), [])
    timings(batch, Phase.DECIDED)
    timings(batch, Phase.FAILED)
    assert [stage for stage, _ in seen] == ["decide"]  # no record timestamp: no fetch
    assert not cast(Any, timings)._last
    late = Batch(cast(Consumer, object()), [])
    timings(late, Phase.STORED)
    assert [stage for stage, _ in seen] == ["decide"]
    timings(late, Phase.COMMITTED)
