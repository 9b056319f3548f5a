"""The batch subscribers' fetch pace: gathering only while records come fast enough."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from services.common import batch_subscriber as module


class _Fetcher:
    def __init__(self) -> None:
        self._fetch_min_bytes, self._fetch_max_wait_ms = 65536, 5


class _Consumer:
    def __init__(self) -> None:
        self._fetcher = _Fetcher()

    @property
    def fetch_settings(self) -> tuple[int, int]:
        return self._fetcher._fetch_min_bytes, self._fetcher._fetch_max_wait_ms


GATHER = (65536, 5)
AT_FIRST_RECORD = (1, module.SLOW_BROKER_WAIT_MS)
IDLE = (1, module.IDLE_BROKER_WAIT_MS)


def _window(consumer: _Consumer, start: float, batches: int, size: int, rule: float) -> float:
    """`batches` getmany results of `size` records spread over one rate window; returns
    the clock after it."""
    step = module.RATE_WINDOW_S / batches
    for i in range(1, batches + 1):
        module.fetch_pace(consumer, size > 0, size, rule, now=start + i * step)
    return start + module.RATE_WINDOW_S


def test_a_slow_stream_is_fetched_at_its_first_record_and_a_fast_one_gathered() -> None:
    consumer = _Consumer()
    clock = 0.0
    module.fetch_pace(consumer, True, 2, 200.0, now=clock)
    # Before a window's rate is known: gathering, as without a rule.
    assert consumer.fetch_settings == GATHER
    clock = _window(consumer, clock, 50, 1, 200.0)  # ~50 records/s: below half the rule
    assert consumer.fetch_settings == AT_FIRST_RECORD
    clock = _window(consumer, clock, 50, 3, 200.0)  # ~150/s: between half and the rule
    assert consumer.fetch_settings == AT_FIRST_RECORD
    clock = _window(consumer, clock, 20, 16, 200.0)  # ~320/s: gather
    assert consumer.fetch_settings == GATHER
    clock = _window(consumer, clock, 20, 7, 200.0)  # ~140/s: above half the rule, still
    assert consumer.fetch_settings == GATHER
    clock = _window(consumer, clock, 20, 4, 200.0)  # ~80/s: below half, stops gathering
    assert consumer.fetch_settings == AT_FIRST_RECORD
    clock = _window(consumer, clock, 20, 7, 200.0)  # ~140/s: below the rule, not yet
    assert consumer.fetch_settings == AT_FIRST_RECORD


def test_an_idle_getmany_asks_for_any_record_even_while_gathering() -> None:
    consumer = _Consumer()
    clock = _window(consumer, 0.0, 20, 16, 200.0)
    clock = _window(consumer, clock, 20, 16, 200.0)
    assert consumer.fetch_settings == GATHER
    module.fetch_pace(consumer, False, 0, 200.0, now=clock + 0.1)
    assert consumer.fetch_settings == IDLE
    module.fetch_pace(consumer, True, 16, 200.0, now=clock + 0.2)
    assert consumer.fetch_settings == GATHER


def test_without_a_rule_a_busy_consumer_always_gathers() -> None:
    consumer = _Consumer()
    module.fetch_pace(consumer, True, 1, now=0.0)
    assert consumer.fetch_settings == GATHER
    _window(consumer, 0.0, 5, 1, 0.0)
    assert consumer.fetch_settings == GATHER


def test_the_subscriber_carries_its_rule() -> None:
    plain = module.batch_subscriber(KafkaBroker(), "t1")
    ruled = module.batch_subscriber(KafkaBroker(), "t2", gather_above_per_s=200)
    assert isinstance(plain, module.WaitingBatchSubscriber)
    assert isinstance(ruled, module.WaitingBatchSubscriber)
    assert plain.gather_above_per_s == 0
    assert ruled.gather_above_per_s == 200
