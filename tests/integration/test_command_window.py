"""The API's windowed publisher (services/api/command_window.py) on a real broker: records
published concurrently land, each on the partition Kafka's default partitioner gives its
key, in the order of their publication per key, with their headers; a record whose
request gave up before its window went out is not sent."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from services.api.command_window import WindowedPublisher
from services.common.kafka_io import Outgoing
from services.common.kafka_topics import ensure_topics, partitions_of
from services.common.metrics import API_COMMAND_WINDOWS
from services.common.settings import RunstoreSettings
from tests.support.kafka import read_to_end


async def read_all(
    settings: RunstoreSettings, topic: str
) -> list[tuple[int, bytes, bytes, dict[str, bytes]]]:
    """Every record of `topic`: (partition, key, value, headers), partition by partition."""
    return [
        (r.partition, r.key, r.value, dict(r.headers))
        for r in await read_to_end(
            settings.kafka_bootstrap, topic, await partitions_of(settings, topic)
        )
    ]


async def test_concurrent_records_land_on_their_keys_partitions_in_order(
    settings: RunstoreSettings,
) -> None:
    await ensure_topics(settings)
    topic = settings.topics.commands
    publisher = WindowedPublisher(settings, "test-window", window_ms=20)
    await publisher.start()
    try:
        # 40 keys, 5 records each, published by concurrent callers in 5 rounds: each round
        # shares a window, and a key's records come in the order of the rounds.
        for round_ in range(5):
            await asyncio.gather(
                *(
                    publisher.publish(
                        [Outgoing(topic, f"exec-{k}", f"{k}:{round_}".encode(), {"n": str(round_)})]
                    )
                    for k in range(40)
                )
            )
        # Several records in one call, one of them on another topic.
        await publisher.publish(
            [
                Outgoing(topic, "exec-0", b"0:5"),
                Outgoing(settings.topics.tasks, "exec-0", b"task"),
                Outgoing(topic, "exec-0", b"0:6"),
            ]
        )
    finally:
        await publisher.stop()

    count = len(await partitions_of(settings, topic))
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for partition, key, value, headers in await read_all(settings, topic):
        assert partition == DefaultPartitioner()(key, list(range(count)), []), key
        round_ = value.split(b":")[1]
        assert headers == ({"n": round_} if int(round_) < 5 else {}), value
        by_key[key].append(value)
    assert len(by_key) == 40
    for k in range(40):
        rounds = range(7) if k == 0 else range(5)
        assert by_key[f"exec-{k}".encode()] == [f"{k}:{r}".encode() for r in rounds]
    assert [v for _, _, v, _ in await read_all(settings, settings.topics.tasks)] == [b"task"]


async def test_a_record_given_up_before_its_window_went_out_is_not_sent(
    settings: RunstoreSettings,
) -> None:
    await ensure_topics(settings)
    topic = settings.topics.outcomes
    publisher = WindowedPublisher(settings, "test-window", window_ms=200)
    await publisher.start()
    try:
        gave_up = asyncio.create_task(publisher.publish([Outgoing(topic, "a", b"abandoned")]))
        await asyncio.sleep(0.01)
        gave_up.cancel()
        await publisher.publish([Outgoing(topic, "b", b"kept")])
    finally:
        await publisher.stop()
    assert [v for _, _, v, _ in await read_all(settings, topic)] == [b"kept"]


async def test_a_window_of_records_on_every_partition_is_one_produce_request(
    settings: RunstoreSettings,
) -> None:
    """What the window is for: aiokafka's own linger sends a partition's batch when its
    linger runs out, so records spread over partitions went out in several requests."""
    await ensure_topics(settings)
    topic = settings.topics.commands
    publisher = WindowedPublisher(settings, "test-window", window_ms=50)
    await publisher.start()
    produce_requests = 0
    client = publisher._producer.client  # type: ignore[union-attr]
    send = client.send

    async def counting_send(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal produce_requests
        if type(request).__name__.startswith("ProduceRequest"):
            produce_requests += 1
        return await send(node_id, request, *args, **kwargs)

    def window() -> Any:
        return asyncio.gather(
            *(publisher.publish([Outgoing(topic, f"spread-{k}", b"x")]) for k in range(60))
        )

    client.send = counting_send
    try:
        # A topic just created answers "not the leader" for a moment (each retry is a
        # request): once one window has gone through, leaders are known.
        await window()
        produce_requests = 0
        await window()
    finally:
        await publisher.stop()
    partitions = {p for p, _, _, _ in await read_all(settings, topic)}
    assert len(partitions) > 1
    assert produce_requests == 1


def count_produce_requests(publisher: WindowedPublisher) -> list[int]:
    """A one-element counter of the produce requests `publisher`'s producer sends."""
    counter = [0]
    client = publisher._producer.client  # type: ignore[union-attr]
    send = client.send

    async def counting_send(node_id: int, request: Any, *args: Any, **kwargs: Any) -> Any:
        if type(request).__name__.startswith("ProduceRequest"):
            counter[0] += 1
        return await send(node_id, request, *args, **kwargs)

    client.send = counting_send
    return counter


async def test_a_burst_goes_out_once_no_record_came_for_the_quiet_time(
    settings: RunstoreSettings,
) -> None:
    """With `quiet_ms`, concurrent requests (a burst) are not held for the whole linger —
    here ten minutes, which the publishes would otherwise wait out — and still share one
    produce request."""
    await ensure_topics(settings)
    topic = settings.topics.commands
    publisher = WindowedPublisher(settings, "test-window", window_ms=600_000, quiet_ms=20)
    await publisher.start()
    produce_requests = count_produce_requests(publisher)

    async def burst(tag: str) -> None:
        async with asyncio.timeout(60):
            await asyncio.gather(
                *(publisher.publish([Outgoing(topic, f"{tag}-{k}", b"x")]) for k in range(60))
            )

    try:
        await burst("warm")  # leaders known: no "not the leader" retries below
        produce_requests[0] = 0
        await burst("burst")
    finally:
        await publisher.stop()
    assert produce_requests[0] == 1
    assert len(await read_all(settings, topic)) == 120


async def test_a_window_goes_out_at_once_when_no_other_record_can_come(
    settings: RunstoreSettings,
) -> None:
    """With `placed` (the API's connection census) saying that no other request can come,
    a window goes out as soon as its records are in it: here neither a ten-minute linger
    nor a one-minute quiet time is waited out. Records placed while the census still
    expects others wait and share the window with the last one."""
    await ensure_topics(settings)
    topic = settings.topics.commands
    expected = [3]  # requests still to come: each publish places one

    def placed() -> None:  # (as the census: the window is told once none can come)
        expected[0] -= 1
        if expected[0] <= 0:
            publisher.nothing_can_come()

    publisher = WindowedPublisher(
        settings, "test-window", window_ms=600_000, quiet_ms=60_000, placed=placed
    )
    await publisher.start()
    produce_requests = count_produce_requests(publisher)
    ended = API_COMMAND_WINDOWS.labels("all_waiting")

    async def three(tag: str) -> None:
        async with asyncio.timeout(30):
            await asyncio.gather(
                *(publisher.publish([Outgoing(topic, f"k-{k}", tag.encode())]) for k in range(3))
            )

    try:
        # The same keys first, so the leaders of their partitions are known below (a
        # fresh topic's "not the leader" answer would make a retry, a second request).
        await three("warm")
        expected[0], produce_requests[0] = 3, 0
        before = ended._value.get()
        await three("measured")
    finally:
        await publisher.stop()
    assert produce_requests[0] == 1
    assert ended._value.get() == before + 1
    assert len(await read_all(settings, topic)) == 6


async def paced_produce_requests(
    settings: RunstoreSettings, quiet_ms: int, count: int, every_s: float
) -> int:
    """The produce requests of `count` records published `every_s` apart (after a first
    one that warms the producer up) through a window with a one-minute linger."""
    await ensure_topics(settings)
    topic = settings.topics.commands
    publisher = WindowedPublisher(settings, "test-window", window_ms=60_000, quiet_ms=quiet_ms)
    await publisher.start()
    produce_requests = count_produce_requests(publisher)
    try:
        await publisher.publish([Outgoing(topic, "warm", b"x")])
        produce_requests[0] = 0
        sent = []
        for k in range(count):
            sent.append(asyncio.create_task(publisher.publish([Outgoing(topic, f"p{k}", b"x")])))
            await asyncio.sleep(every_s)
        async with asyncio.timeout(60):
            await asyncio.gather(*sent)
    finally:
        await publisher.stop()
    return produce_requests[0]


async def test_records_that_keep_coming_share_a_window_up_to_the_linger(
    settings: RunstoreSettings,
) -> None:
    """Records coming closer together than `quiet_ms` keep the window open (up to the
    linger): the quiet time ends a burst, not a steady stream."""
    assert await paced_produce_requests(settings, quiet_ms=1_000, count=10, every_s=0.01) == 1


async def test_records_at_a_steady_pace_share_windows_though_each_gap_exceeds_quiet_ms(
    settings: RunstoreSettings,
) -> None:
    """Paced records (one every 20 ms here, four times `quiet_ms`) are not a burst: the
    window waits a few of their usual gaps, so they still share windows instead of each
    going alone (what a fixed quiet time did: one produce request per record)."""
    assert await paced_produce_requests(settings, quiet_ms=5, count=20, every_s=0.02) <= 5


async def test_a_refused_batch_fails_the_batches_after_it_on_its_partition(
    settings: RunstoreSettings,
) -> None:
    """A key's records that fill several batches of one window: once the broker refuses
    one batch, the later ones are not sent (they would land before a retry of it)."""
    await ensure_topics(settings)
    topic = settings.topics.outcomes
    publisher = WindowedPublisher(settings, "test-window", window_ms=200)
    await publisher.start()
    producer = publisher._producer
    assert producer is not None
    real_send = producer.send_batch
    sent: list[int] = []

    async def refuse_the_first(builder: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(len(sent))
        if len(sent) == 1:
            refused: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            refused.set_exception(RuntimeError("refused by the broker"))
            return refused
        return await real_send(builder, *args, **kwargs)

    producer.send_batch = refuse_the_first  # type: ignore[method-assign]
    big = b"x" * 150_000  # two do not fit the producer's batch (256 KiB): one batch each
    try:
        results = await asyncio.gather(
            *(publisher.publish([Outgoing(topic, "one-key", big + bytes([n]))]) for n in range(4)),
            return_exceptions=True,
        )
    finally:
        await publisher.stop()
    assert sent == [0], "nothing after the refused batch was handed to the broker"
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert await read_all(settings, topic) == []


async def test_a_partition_not_handed_over_fails_only_its_own_records(
    settings: RunstoreSettings,
) -> None:
    """A window's partitions are handed over in one pass: when the producer refuses one
    partition's batch (here: raises), that partition's callers get the error, and the
    other partitions' records still land and are acknowledged."""
    await ensure_topics(settings)
    topic = settings.topics.commands
    publisher = WindowedPublisher(settings, "test-window", window_ms=50)
    await publisher.start()
    producer = publisher._producer
    assert producer is not None
    real_send = producer.send_batch
    refused_partition: list[int] = []

    async def refuse_one_partition(builder: Any, topic_: str, *, partition: int) -> Any:
        if not refused_partition:
            refused_partition.append(partition)
        if partition == refused_partition[0]:
            raise RuntimeError("not handed over")
        return await real_send(builder, topic_, partition=partition)

    keys = [f"spread-{k}" for k in range(40)]
    try:
        await publisher.publish([Outgoing(topic, "warm", b"w")])  # leaders known
        producer.send_batch = refuse_one_partition  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(publisher.publish([Outgoing(topic, key, key.encode())]) for key in keys),
            return_exceptions=True,
        )
    finally:
        await publisher.stop()
    count = len(await partitions_of(settings, topic))
    partitioner = DefaultPartitioner()
    refused = {
        key
        for key in keys
        if partitioner(key.encode(), list(range(count)), list(range(count))) == refused_partition[0]
    }
    assert refused and len(refused) < len(keys)
    for key, result in zip(keys, results, strict=True):
        if key in refused:
            assert isinstance(result, RuntimeError), (key, result)
        else:
            assert result is None, (key, result)
    landed = {v.decode() for _, _, v, _ in await read_all(settings, topic)}
    assert landed == {"w"} | (set(keys) - refused)


async def test_a_record_whose_window_outlasts_its_deadline_times_out_and_is_not_sent(
    settings: RunstoreSettings,
) -> None:
    """`publish(..., within_seconds)`: a record not acknowledged by then fails with
    TimeoutError, and one whose window has not gone out is skipped when it does (what a
    cancelled publish gets). Another record of that window still lands."""
    await ensure_topics(settings)
    topic = settings.topics.outcomes
    publisher = WindowedPublisher(settings, "test-window", window_ms=600)
    await publisher.start()
    try:
        kept = asyncio.create_task(publisher.publish([Outgoing(topic, "k", b"kept")]))
        with pytest.raises(TimeoutError):
            await publisher.publish([Outgoing(topic, "k", b"late")], within_seconds=0.05)
        async with asyncio.timeout(30):
            await kept
    finally:
        await publisher.stop()
    assert [v for _, _, v, _ in await read_all(settings, topic)] == [b"kept"]


async def test_a_topic_without_metadata_fails_its_records_once_even_after_a_deadline_passed(
    settings: RunstoreSettings,
) -> None:
    """The partition count of a topic not yet known is awaited once per window; when it
    cannot be learnt, every record of that topic fails with the error — including one
    whose deadline passed during the wait (it already holds its TimeoutError) — and the
    window goes on: a record of a known topic in the same window still lands."""
    await ensure_topics(settings)
    topic = settings.topics.outcomes
    publisher = WindowedPublisher(settings, "test-window", window_ms=20)
    await publisher.start()
    producer = publisher._producer
    assert producer is not None
    lookups: list[str] = []

    async def slow_unknown_topic(topic_: str) -> set[int]:
        lookups.append(topic_)
        await asyncio.sleep(0.2)
        raise RuntimeError(f"no metadata for {topic_}")

    try:
        await publisher.publish([Outgoing(topic, "warm", b"w")])  # its count is known
        producer.partitions_for = slow_unknown_topic  # type: ignore[method-assign]
        async with asyncio.timeout(30):  # (before the fix, the second record never settled)
            results = await asyncio.gather(
                publisher.publish([Outgoing("no-such-topic", "a", b"a")], within_seconds=0.05),
                publisher.publish([Outgoing("no-such-topic", "b", b"b")]),
                publisher.publish([Outgoing(topic, "k", b"kept")]),
                return_exceptions=True,
            )
    finally:
        await publisher.stop()
    assert isinstance(results[0], TimeoutError), results[0]
    assert isinstance(results[1], RuntimeError), results[1]
    assert results[2] is None, results[2]
    assert lookups == ["no-such-topic"]
    assert sorted(v for _, _, v, _ in await read_all(settings, topic)) == [b"kept", b"w"]
