"""`batch_subscriber` (services/common/batch_subscriber.py): FastStream's batch subscriber
whose fetch waits for records instead of sleeping after an empty one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import fast_depends.utils
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.message import KafkaMessage as KafkaMessageClass

from services.common import batch_subscriber as module
from services.common.batch_subscriber import (
    WaitingBatchSubscriber,
    batch_subscriber,
    message_as_body,
)
from services.common.kafka_io import batch_records
from services.common.kafka_topics import ensure_topics, partitions_of
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


async def test_a_batch_handler_gets_its_message_without_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # fast_depends runs every plain-function resolver in a worker thread: count the hops.
    hops: list[object] = []
    to_thread = fast_depends.utils.run_in_threadpool

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(fast_depends.utils, "run_in_threadpool", counted)
    broker = KafkaBroker()
    got: dict[str, list[bytes]] = {}

    @batch_subscriber(broker, "as-body", decoder=message_as_body)
    async def as_body(body: Any) -> None:
        assert isinstance(body, KafkaMessageClass)
        got["as body"] = [r.value for r in body.raw_message]  # (a list on the test broker)

    @batch_subscriber(broker, "as-context", decoder=raw_records)
    async def as_context(message: KafkaMessage) -> None:
        got["as context"] = [r.value for r in message.raw_message]

    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(b"a", b"b", topic="as-body")
        assert got["as body"] == [b"a", b"b"]
        assert hops == []
        # What message_as_body avoids: a `KafkaMessage` parameter (a FastStream Context)
        # is resolved in a worker thread, once per batch.
        await test_broker.publish_batch(b"c", topic="as-context")
        assert got["as context"] == [b"c"]
        assert len(hops) == 1


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


@asynccontextmanager
async def _gathering_consumer(settings: RunstoreSettings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that gathers (64 KiB or 5 ms, as an engine set to gather does), assigned
    every partition of the commands topic at its end; stopped on exit."""
    await ensure_topics(settings)
    topic = settings.topics.commands
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        fetch_min_bytes=65536,
        fetch_max_wait_ms=5,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partitions_of(settings, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        yield consumer
    finally:
        await consumer.stop()


async def test_a_gathering_consumer_asks_for_any_record_while_idle(
    settings: RunstoreSettings,
) -> None:
    # A gathering consumer's fetches (64 KiB or 5 ms) would go every 5 ms for nothing
    # while idle. After an idle getmany the fetcher asks for any record; the first batch
    # that comes gives it back its own settings.
    topic = settings.topics.commands
    async with _gathering_consumer(settings) as consumer:
        subscriber = batch_subscriber(KafkaBroker(), topic)
        fetcher: Any = consumer._fetcher  # type: ignore[attr-defined]

        assert await subscriber.get_msg(consumer) == ()  # idle for IDLE_FETCH_WAIT_MS
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (
            1,
            module.IDLE_BROKER_WAIT_MS,
        )

        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"a command", key=b"k")
        finally:
            await producer.stop()
        got: tuple[Any, ...] = ()
        while not got:
            got = await subscriber.get_msg(consumer)
        assert [r.value for r in got] == [b"a command"]
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (65536, 5)


def test_a_consumer_that_does_not_gather_is_left_alone() -> None:
    class Fetcher:
        _fetch_min_bytes, _fetch_max_wait_ms = 1, 100

    class Consumer:
        _fetcher = Fetcher()

    consumer = Consumer()
    module.fetch_pace(consumer, busy=False)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, 100)
    module.fetch_pace(object(), busy=False)  # no aiokafka fetcher: nothing to do, no error


class _Fetcher:
    """aiokafka's fetcher as `pace_by_response` sees it: the next request's settings, and a
    response processor answering whether it buffered records."""

    def __init__(self, min_bytes: int, answers: list[bool]) -> None:
        self._fetch_min_bytes, self._fetch_max_wait_ms = min_bytes, 5
        self.answers = answers
        self._records: dict[str, object] = {}  # records fetched, not consumed yet

    async def _proc_fetch_request(self, *_args: object) -> bool:
        return self.answers.pop(0)


def test_each_response_sets_the_next_fetchs_pace() -> None:
    class Consumer:
        _fetcher = _Fetcher(65536, [False, False, True, True, False, True])

    consumer = Consumer()
    assert module.pace_by_response(consumer)
    fetcher: Any = consumer._fetcher
    wrapper = fetcher._proc_fetch_request
    assert module.pace_by_response(consumer)
    assert fetcher._proc_fetch_request is wrapper  # once only: not wrapped again per batch
    paces = []
    for _ in range(6):
        anyio.run(fetcher._proc_fetch_request, None, 0, None)
        paces.append((fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms))
    between, own = (1, module.BETWEEN_WAVES_WAIT_MS), (65536, 5)
    assert paces == [between, between, own, own, between, own]


class _FetchingConsumer:
    """A consumer whose `getmany` answers from a list (None: idle, nothing), over a fetcher."""

    def __init__(self, fetcher: object, batches: list[dict[str, list[object]]]) -> None:
        self._fetcher = fetcher
        self.batches = batches

    async def getmany(self, **_options: Any) -> dict[str, list[object]]:
        return self.batches.pop(0)


def _record() -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("commands", 0, 0, 0, 0, None, b"{}", None, 0, 2, [])


async def test_an_idle_getmany_lengthens_the_wait_and_an_empty_fetch_keeps_it() -> None:
    # Between waves a held fetch lasts at most BETWEEN_WAVES_WAIT_MS (what a partition sought
    # back meanwhile may wait); a whole idle getmany lengthens it to IDLE_BROKER_WAIT_MS.
    fetcher = _Fetcher(65536, [False, False, True])
    consumer = _FetchingConsumer(fetcher, [{}, {"commands-0": [_record()]}])
    subscriber = batch_subscriber(KafkaBroker(), "some-topic", pace_each_fetch=True)

    assert await subscriber.get_msg(consumer) == ()  # type: ignore[arg-type]
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, module.IDLE_BROKER_WAIT_MS)
    await fetcher._proc_fetch_request()
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, module.IDLE_BROKER_WAIT_MS)
    await fetcher._proc_fetch_request()
    await fetcher._proc_fetch_request()
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (65536, 5)
    assert len(await subscriber.get_msg(consumer)) == 1  # type: ignore[arg-type]
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (65536, 5)


async def test_a_fetcher_it_cannot_pace_per_response_is_paced_by_getmany() -> None:
    class OldFetcher:  # no `_proc_fetch_request`: an aiokafka this was not written against
        _fetch_min_bytes, _fetch_max_wait_ms = 65536, 5

    fetcher = OldFetcher()
    consumer = _FetchingConsumer(fetcher, [{}, {"commands-0": [_record()]}])
    subscriber = batch_subscriber(KafkaBroker(), "some-topic", pace_each_fetch=True)

    assert await subscriber.get_msg(consumer) == ()  # type: ignore[arg-type]
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, module.IDLE_BROKER_WAIT_MS)
    await subscriber.get_msg(consumer)  # type: ignore[arg-type]
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (65536, 5)


def test_an_empty_fetch_keeps_gathering_while_fetched_records_wait_to_be_consumed() -> None:
    # The fetcher leaves a partition with unconsumed records out of its requests and sends
    # one request at a time: an "any record" fetch for the others would hold that
    # partition's next fetch up to IDLE_BROKER_WAIT_MS.
    class Consumer:
        _fetcher = _Fetcher(65536, [True, False, False])

    consumer = Consumer()
    module.pace_by_response(consumer)
    fetcher: Any = consumer._fetcher
    fetcher._records["commands-3"] = object()
    anyio.run(fetcher._proc_fetch_request, None)
    anyio.run(fetcher._proc_fetch_request, None)
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (65536, 5)
    fetcher._records.clear()  # consumed
    anyio.run(fetcher._proc_fetch_request, None)
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (
        1,
        module.BETWEEN_WAVES_WAIT_MS,
    )


def test_a_consumer_that_never_gathers_is_not_paced() -> None:
    class Consumer:
        _fetcher = _Fetcher(1, [False])

    consumer = Consumer()
    module.pace_by_response(consumer)
    anyio.run(consumer._fetcher._proc_fetch_request, None)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, 5)
    module.pace_by_response(object())  # no aiokafka fetcher: nothing to do, no error


async def test_a_paced_consumer_waits_for_the_next_wave_without_polling_and_takes_it_whole(
    settings: RunstoreSettings,
) -> None:
    # Gathering (64 KiB or 5 ms) between waves of commands was a fetch every 5 ms that the
    # broker held and expired empty. Paced per response, an idle consumer's fetch waits
    # for the next record instead; a wave produced in one request comes in one fetch.
    topic = settings.topics.commands
    async with _gathering_consumer(settings) as consumer:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=50)
        await producer.start()
        try:
            subscriber = batch_subscriber(KafkaBroker(), topic, pace_each_fetch=True)
            client: Any = consumer._client  # type: ignore[attr-defined]
            send = client.send
            fetches: list[object] = []

            async def counted(node_id: int, request: Any, **options: Any) -> Any:
                if type(request).__name__.startswith("FetchRequest"):
                    fetches.append(request)
                return await send(node_id, request, **options)

            client.send = counted
            idle = anyio.Event()

            async def quiet_for_a_second() -> None:
                await anyio.sleep(1.0)
                idle.set()

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(quiet_for_a_second)
                while not idle.is_set():
                    await subscriber.get_msg(consumer)
                    if not idle.is_set():
                        await anyio.sleep(0.05)
            # Gathering would have sent ~200 fetches in that second (65 on a loaded box); paced,
            # the first empty one turned the next into a wait for any record, of
            # BETWEEN_WAVES_WAIT_MS until the idle getmany made it IDLE_BROKER_WAIT_MS.
            assert len(fetches) <= 15

            wave = [f"cmd-{n}".encode() for n in range(40)]
            sent = [await producer.send(topic, value, key=value) for value in wave]
            await producer.flush()
            for future in sent:
                await future
            got: tuple[Any, ...] = ()
            while not got:
                got = await subscriber.get_msg(consumer)
            assert sorted(r.value for r in got) == sorted(wave)
        finally:
            await producer.stop()


async def test_a_null_header_value_is_read_as_empty() -> None:
    # FastStream's batch parser decodes every header value: one None failed the whole
    # batch before the handler saw it (services/common/batch_subscriber.py).
    nulled = _record()
    nulled.headers = [("runstore-reply", None), ("traceparent", b"00-x")]  # type: ignore[list-item]
    plain = _record()
    consumer = _FetchingConsumer(object(), [{"commands-0": [nulled, plain]}])
    subscriber = batch_subscriber(KafkaBroker(), "some-topic")
    got = await subscriber.get_msg(consumer)  # type: ignore[arg-type]
    assert [r.headers for r in got] == [[("runstore-reply", b""), ("traceparent", b"00-x")], []]
