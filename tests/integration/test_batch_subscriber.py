"""`batch_subscriber` (services/common/batch_subscriber.py): FastStream's batch subscriber
whose fetch waits for records instead of sleeping after an empty one."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.common import batch_subscriber as module
from services.common.batch_subscriber import WaitingBatchSubscriber, batch_subscriber
from services.common.kafka_io import batch_records
from services.common.kafka_topics import ensure_topics
from services.common.settings import RunstoreSettings
from services.common.stream_service import raw_records
from tests.support.eventually import assert_eventually


class _EmptyConsumer:
    """A consumer with nothing to fetch: `getmany` returns at once, empty."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def getmany(self, **options: Any) -> dict[object, list[object]]:
        self.calls.append(options)
        return {}


async def test_an_empty_fetch_returns_nothing_without_sleeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_sleep(_seconds: float) -> None:
        raise AssertionError("the subscriber slept after an empty fetch")

    # FastStream's own BatchSubscriber sleeps through anyio here after an empty getmany.
    monkeypatch.setattr(anyio, "sleep", no_sleep)
    subscriber = batch_subscriber(KafkaBroker(), "some-topic", max_records=7)
    consumer = _EmptyConsumer()

    got = await subscriber.get_msg(consumer)  # type: ignore[arg-type]

    assert got == ()
    assert consumer.calls == [{"timeout_ms": module.IDLE_FETCH_WAIT_MS, "max_records": 7}]


def test_the_idle_wait_is_not_the_callers_to_set() -> None:
    with pytest.raises(TypeError, match="batch_timeout_ms"):
        batch_subscriber(KafkaBroker(), "some-topic", batch_timeout_ms=50)


async def test_records_after_idle_fetches_are_consumed(
    settings: RunstoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short idle waits, so the subscriber goes through empty fetches between the waves.
    monkeypatch.setattr(module, "IDLE_FETCH_WAIT_MS", 20)
    await ensure_topics(settings)
    topic = settings.topics.commands
    broker = KafkaBroker(settings.kafka_bootstrap, logger=None)
    subscriber = batch_subscriber(
        broker,
        topic,
        group_id=settings.group("batch-subscriber-test"),
        auto_offset_reset="earliest",
        decoder=raw_records,
    )
    assert isinstance(subscriber, WaitingBatchSubscriber)
    seen: list[bytes] = []

    @subscriber
    async def handle(message: KafkaMessage) -> None:
        seen.extend(r.value for r in batch_records(message) if r.value is not None)

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    await broker.start()
    try:
        consumer = subscriber.consumer
        assert consumer is not None
        fetches: list[int] = []
        fetch = consumer.getmany

        async def counted(*args: Any, **options: Any) -> dict[Any, list[ConsumerRecord[Any, Any]]]:
            got = await fetch(*args, **options)
            fetches.append(sum(len(records) for records in got.values()))
            return got

        consumer.getmany = counted  # type: ignore[method-assign]

        for wave in range(2):
            sent = [f"wave{wave}-{n}".encode() for n in range(5)]
            for value in sent:
                await producer.send_and_wait(topic, value, key=b"k")

            async def all_arrived(sent: list[bytes] = sent) -> None:
                assert set(sent) <= set(seen)

            await assert_eventually(all_arrived)
            empty_before = fetches.count(0)

            async def fetched_nothing(empty_before: int = empty_before) -> None:
                assert fetches.count(0) > empty_before

            # The consume loop goes on after an empty fetch, with no handler call.
            await assert_eventually(fetched_nothing)
        assert sorted(seen) == sorted(f"wave{w}-{n}".encode() for w in range(2) for n in range(5))
    finally:
        await broker.stop()
        await producer.stop()
