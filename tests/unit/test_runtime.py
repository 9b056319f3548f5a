"""Process tuning applied by `runstore engine|projector|api` once the app is built."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest
from faststream._internal.utils.functions import to_async

from services.common.runtime import GC_THRESHOLDS, BatchCollector, tune_gc
from services.common.stream_service import raw_records
from services.engine.app import collect_after_failures
from services.engine.pipeline import Batch, Phase
from tests.support.engine import FakeConsumer


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_tune_gc_freezes_the_startup_heap_and_raises_the_thresholds(restore_gc: None) -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(10)]  # allocated "at start-up"
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() >= len(survivor)
    # Frozen objects are out of the collector's generations: a full collection does
    # not look at them.
    assert not any(o is survivor for o in gc.get_objects())


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    """A reference cycle that nothing else holds: only a cyclic collection frees it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def collector(restore_gc: None) -> Iterator[tuple[BatchCollector, _Clock]]:
    clock = _Clock()
    collector = BatchCollector(full_every_s=60, clock=clock)
    collector.start()
    assert collector.check()  # the start-up collection (its own test below)
    try:
        yield collector, clock
    finally:
        collector.stop()


def test_batches_freeze_their_survivors_and_do_not_collect(
    collector: tuple[BatchCollector, _Clock],
) -> None:
    batches, _ = collector
    assert not gc.isenabled()
    frozen = gc.get_freeze_count()
    survivors = [_Node() for _ in range(100)]
    cycle = _cycle()
    batches.after_batch()
    assert gc.get_freeze_count() >= frozen + len(survivors)
    # Frozen, not collected: the cycle waits for the next full collection.
    assert cycle() is not None
    gc.collect()
    assert cycle() is not None


def test_a_full_collection_comes_when_due_and_frees_cycles_among_frozen_objects(
    collector: tuple[BatchCollector, _Clock],
) -> None:
    batches, clock = collector
    cycle = _cycle()
    batches.after_batch()
    clock.now = 59.0
    assert not batches.check()
    assert cycle() is not None
    clock.now = 60.0
    assert batches.check()  # due: unfreeze, collect, freeze again
    assert cycle() is None
    assert not gc.isenabled()
    later = _cycle()
    clock.now = 100.0
    assert not batches.check()  # the next one is due at 120
    assert later() is not None
    assert batches.collect_all() >= 2
    assert later() is None


def test_a_full_collection_comes_when_the_heap_grows_by_a_quarter(
    collector: tuple[BatchCollector, _Clock],
) -> None:
    batches, _ = collector
    cycle = _cycle()
    grown = [[] for _ in range(sys.getallocatedblocks() // 8)]  # ~12% (a block each)
    batches.after_batch()
    assert batches.due() is None
    assert not batches.check()
    assert cycle() is not None
    grown += [[] for _ in range(len(grown) * 2)]  # ~37% in all
    batches.after_batch()
    assert batches.due() == "growth"
    assert batches.check()
    assert cycle() is None
    # The new baseline includes what survived: the same heap is not collected again.
    assert not batches.check()


def test_the_state_cache_growing_is_not_taken_for_garbage(restore_gc: None) -> None:
    cache: list[list[object]] = []  # one block per entry, as a stand-in for the states
    batches = BatchCollector(full_every_s=60, clock=_Clock(), cache_entries=cache.__len__)
    batches.start()
    batches.check()  # start-up
    try:
        cycle = _cycle()
        for _ in range(3):  # the heap grows by half, three times, as the cache fills
            cache += [[] for _ in range(sys.getallocatedblocks() // 2)]
            assert not batches.check()
        assert cycle() is not None
        # Growth while the cache stays as it is counts again.
        garbage = [[] for _ in range(sys.getallocatedblocks() // 3)]
        assert batches.due() == "growth"
        assert batches.check()
        assert cycle() is None
        assert garbage
    finally:
        batches.stop()


def test_a_failed_batch_makes_the_next_check_collect(
    collector: tuple[BatchCollector, _Clock],
) -> None:
    batches, _ = collector
    failed_batch = _cycle()  # what a failed batch's exception and traceback hold
    batches.after_batch()
    assert not batches.check()
    batches.batch_failed()
    batches.batch_failed()
    assert batches.due() == "2 failed batches"
    assert failed_batch() is not None  # nothing runs until the check
    assert batches.check()
    assert failed_batch() is None
    assert batches.due() is None


def test_survivors_of_a_full_collection_are_frozen_again(
    collector: tuple[BatchCollector, _Clock],
) -> None:
    batches, _ = collector
    survivor = [_Node() for _ in range(10)]
    batches.collect_all()
    assert gc.get_freeze_count() >= len(survivor)
    assert not any(o is survivor for o in gc.get_objects())


def test_start_sets_the_time_of_the_first_full_collection(restore_gc: None) -> None:
    clock = _Clock()
    batches = BatchCollector(full_every_s=60, clock=clock)
    clock.now = 1000.0  # constructed long before it starts
    batches.start()
    try:
        assert batches.check()  # start-up
        clock.now = 1059.0
        assert not batches.check()
        clock.now = 1060.0
        assert batches.check()
    finally:
        batches.stop()


def test_the_first_check_collects_what_start_up_left_in_cycles(restore_gc: None) -> None:
    batches = BatchCollector(full_every_s=60, clock=_Clock())
    batches.start()
    try:
        # Left while the consumer starts, after `start`: e.g. an exception of a failed
        # coordinator lookup, holding its sockets. The first batch freezes it.
        start_up = _cycle()
        batches.after_batch()
        assert start_up() is not None
        assert batches.due() == "start-up"
        assert batches.check()
        assert start_up() is None
        assert batches.due() is None
    finally:
        batches.stop()


def test_the_first_batch_collects_what_start_up_left_in_cycles_before_it_runs(
    restore_gc: None,
) -> None:
    batches = BatchCollector(full_every_s=60, clock=_Clock())
    batches.start()
    try:
        start_up = _cycle()  # left while the consumer started
        batches.before_batch()
        assert start_up() is None
        assert batches.due() is None
        # Once only: a later batch's cycles wait for a check that is due.
        later = _cycle()
        batches.before_batch()
        batches.after_batch()
        assert later() is not None
    finally:
        batches.stop()


def test_stop_hands_collection_back_to_the_interpreter(restore_gc: None) -> None:
    batches = BatchCollector()
    batches.start()
    cycle = _cycle()
    batches.after_batch()
    batches.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.collect()
    assert cycle() is None


def test_the_engine_collects_after_a_batch_fails(
    collector: tuple[BatchCollector, _Clock],
) -> None:
    batches, _ = collector
    observe = collect_after_failures(batches)
    batch = Batch(FakeConsumer(), [])
    for phase in (Phase.RECEIVED, Phase.DECIDED, Phase.STORING, Phase.STORED, Phase.COMMITTED):
        observe(batch, phase)
    assert batches.due() is None
    observe(batch, Phase.FAILED)
    assert batches.due() == "1 failed batches"


def test_the_stream_services_decode_batches_on_their_loop_not_in_a_worker_thread() -> None:
    # FastStream wraps a plain function decoder in anyio's `to_thread` (one thread hop
    # per batch); a coroutine it awaits as it is.
    assert to_async(raw_records) is raw_records
