"""The API's topic feed on a real broker (services/api/topic_tail.py over
session_fetch.py): requests in a fetch session name only the partitions that brought
records; every record is handed over once, in order, through a lost session and a
position out of the log's range; sessions are closed when the fetcher stops."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer

from services.api.session_fetch import (
    SessionFetcher,
    SessionFetchRequest,
    TailRecord,
    encode_fetch,
    ends_when_led,
)
from services.api.topic_tail import TopicFeed
from services.common.kafka_topics import ensure_topics
from services.common.settings import RunstoreSettings


async def publish(settings: RunstoreSettings, topic: str, records: list[tuple[int, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for partition, value in records:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


def named_partitions(body: bytes) -> int:
    """How many partitions a FetchRequest v7's body names."""
    (topics,) = struct.unpack_from(">i", body, 25)
    at, named = 29, 0
    for _ in range(topics):
        (length,) = struct.unpack_from(">h", body, at)
        at += 2 + length
        (count,) = struct.unpack_from(">i", body, at)
        at += 4 + count * 24
        named += count
    return named


class Recorded:
    """Records handed over, by topic and partition."""

    def __init__(self) -> None:
        self.got: dict[tuple[str, int], list[TailRecord]] = {}

    def deliver(self, topic: str, partition: int, records: list[Any]) -> None:
        self.got.setdefault((topic, partition), []).extend(records)

    def values(self, topic: str, partition: int) -> list[bytes | None]:
        return [r.value for r in self.got.get((topic, partition), [])]

    async def until(self, count: int) -> None:
        async with asyncio.timeout(20):
            while sum(len(r) for r in self.got.values()) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.02)


@pytest.fixture
async def topics(settings: RunstoreSettings) -> RunstoreSettings:
    await ensure_topics(settings)
    return settings


@pytest.fixture
async def client(topics: RunstoreSettings) -> AsyncIterator[AIOKafkaClient]:
    client = AIOKafkaClient(bootstrap_servers=topics.kafka_bootstrap)
    await client.bootstrap()
    await client.set_topics([topics.topics.events])
    try:
        yield client
    finally:
        await client.close()


async def test_fetches_in_a_session_name_only_the_partitions_that_brought_records(
    topics: RunstoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    named: list[int] = []  # partitions named by each fetch request
    original = AIOKafkaClient.send

    async def noting(self: AIOKafkaClient, node_id: int, request: Any, **kw: Any) -> Any:
        if isinstance(request, SessionFetchRequest):
            named.append(named_partitions(request.prepare({1: (0, 16)}).encode()))
        elif request.API_KEY == 1:  # aiokafka's consumer's
            named.append(sum(len(partitions) for _, partitions in request.topics))
        return await original(self, node_id, request, **kw)

    monkeypatch.setattr(AIOKafkaClient, "send", noting)
    events, outcomes = topics.topics.events, topics.topics.outcomes
    got: list[tuple[str, int, bytes | None]] = []
    feed = TopicFeed(topics, "test-feed")
    feed.follow(events, lambda p, rs: got.extend((events, p, r.value) for r in rs))
    feed.follow(outcomes, lambda p, rs: got.extend((outcomes, p, r.value) for r in rs))
    await feed.start()
    try:
        partitions = topics.partitions
        async with asyncio.timeout(20):
            while not named:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert named[0] == 2 * partitions  # the session's full fetch
        for n in range(3):
            await publish(topics, events, [(2, b"e%d" % n)])
            await publish(topics, outcomes, [(1, b"o%d" % n)])
        async with asyncio.timeout(20):
            while len(got) < 6:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await publish(topics, events, [(2, b"last")])
        async with asyncio.timeout(20):
            while len(got) < 7:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await feed.stop()
    assert [v for t, p, v in got if (t, p) == (events, 2)] == [b"e0", b"e1", b"e2", b"last"]
    assert [v for t, p, v in got if (t, p) == (outcomes, 1)] == [b"o0", b"o1", b"o2"]
    assert {(t, p) for t, p, _ in got} == {(events, 2), (outcomes, 1)}
    # After the first, each request names at most the two partitions that moved.
    assert len(named) >= 3
    assert max(named[1:]) <= 2


async def test_a_lost_session_starts_a_new_one_without_losing_or_repeating_records(
    topics: RunstoreSettings, client: AIOKafkaClient
) -> None:
    topic = topics.topics.events
    keys = [(topic, p) for p in range(topics.partitions)]
    positions = await ends_when_led(client, keys)
    recorded = Recorded()
    fetcher = SessionFetcher(client, positions, recorded.deliver, max_wait_ms=100)
    task = asyncio.create_task(fetcher.run())
    try:
        assert topics.partitions >= 3
        await publish(topics, topic, [(0, b"a"), (1, b"b")])
        await recorded.until(2)
        # The broker's session and ours out of step: it refuses the next epoch.
        for session in fetcher.sessions.values():
            session.epoch += 5
        await publish(topics, topic, [(0, b"c"), (1, b"d"), (2, b"e")])
        await recorded.until(5)
        await publish(topics, topic, [(0, b"f")])
        await recorded.until(6)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert fetcher.sessions_lost >= 1
    assert recorded.values(topic, 0) == [b"a", b"c", b"f"]
    assert recorded.values(topic, 1) == [b"b", b"d"]
    assert recorded.values(topic, 2) == [b"e"]
    for (_, partition), records in recorded.got.items():
        offsets = [r.offset for r in records]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), partition


async def test_a_position_past_the_log_reads_on_from_its_end(
    topics: RunstoreSettings, client: AIOKafkaClient
) -> None:
    topic = topics.topics.events
    await publish(topics, topic, [(2, b"old")])
    keys = [(topic, p) for p in range(topics.partitions)]
    positions = await ends_when_led(client, keys)
    end = positions[topic, 2]
    positions[topic, 2] = end + 1000
    recorded = Recorded()
    fetcher = SessionFetcher(client, positions, recorded.deliver, max_wait_ms=100)
    task = asyncio.create_task(fetcher.run())
    try:
        async with asyncio.timeout(20):
            while positions[topic, 2] != end:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await publish(topics, topic, [(2, b"new")])
        await recorded.until(1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert recorded.values(topic, 2) == [b"new"]
    assert [r.offset for r in recorded.got[topic, 2]] == [end]


async def test_stopping_closes_the_sessions_on_the_broker(
    topics: RunstoreSettings, client: AIOKafkaClient
) -> None:
    topic = topics.topics.events
    keys = [(topic, p) for p in range(topics.partitions)]
    positions = await ends_when_led(client, keys)
    fetcher = SessionFetcher(client, positions, Recorded().deliver, max_wait_ms=100)
    task = asyncio.create_task(fetcher.run())
    try:
        async with asyncio.timeout(20):
            while not fetcher.sessions or not all(  # noqa: ASYNC110
                s.session_id for s in fetcher.sessions.values()
            ):
                await asyncio.sleep(0.02)
        opened = {node: s.session_id for node, s in fetcher.sessions.items()}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for node, session_id in opened.items():
        # An incremental fetch in the old session: the broker no longer knows it (70),
        # where an open one would answer (0) or refuse the epoch (71).
        body = encode_fetch(
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=1024,
            session_id=session_id,
            epoch=1,
            partitions=[],
            partition_max_bytes=1024,
        )
        answer = await client.send(node, SessionFetchRequest(body))
        assert answer.error == 70, (node, session_id)
