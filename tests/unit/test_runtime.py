"""Process tuning applied by `runstore engine|projector|api` once the app is built."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.common.runtime import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_the_startup_heap_and_raises_the_thresholds(restore_gc: None) -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(10)]  # allocated "at start-up"
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() >= len(survivor)
    # Frozen objects are out of the collector's generations: a full collection does
    # not look at them.
    assert not any(o is survivor for o in gc.get_objects())
