"""The in-process fanout of `workflows.events` on a real broker: one consumer, many
subscribers, and exact catch-up between Kafka positions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from schemas.events import EVENT_ADAPTER, EventType
from services.api.event_fanout import Delivery, EventFanout, SubscriberOverflow, read_between
from services.api.topic_tail import TopicFeed
from services.common.kafka_topics import ensure_topics
from services.common.settings import RunstoreSettings
from tests.support.eventually import assert_eventually


def event_json(execution_id: str, seq: int) -> bytes:
    event = EVENT_ADAPTER.validate_python(
        {
            "type": EventType.WORKFLOW_EXECUTION_SIGNALED.value,
            "event_id": f"{execution_id}:{seq}:0",
            "execution_id": execution_id,
            "seq": seq,
            "index": 0,
            "event_number": seq,
            "run_id": "r",
            "workflow_name": "wf",
            "root_execution_id": execution_id,
            "timestamp_ns": 1,
            "command_id": f"c{seq}",
            "attributes": {"signal_name": "s", "input": {"value": seq}},
        }
    )
    return EVENT_ADAPTER.dump_json(event)


async def publish(settings: RunstoreSettings, records: list[tuple[str, int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for execution_id, seq in records:
            await producer.send_and_wait(
                settings.topics.events, event_json(execution_id, seq), key=execution_id.encode()
            )
    finally:
        await producer.stop()


@pytest.fixture
async def fanout(settings: RunstoreSettings) -> AsyncIterator[EventFanout]:
    await ensure_topics(settings)
    fanout = EventFanout(settings, queue_size=50)
    await fanout.start()
    try:
        yield fanout
    finally:
        await fanout.stop()


async def wait_for_records(fanout: EventFanout, count: int) -> None:
    async def read_all() -> None:
        assert fanout.records_seen >= count

    await assert_eventually(read_all)


async def drain(sub: Any, count: int, timeout: float = 20.0) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            item = await sub.next(1.0)
            if item is not None:
                got.append(item)
    return got


async def test_one_consumer_serves_many_subscribers(
    settings: RunstoreSettings, fanout: EventFanout
) -> None:
    per_execution = [fanout.subscribe(execution_id="exec-a") for _ in range(300)]
    everything = [fanout.subscribe() for _ in range(100)]
    only_b = fanout.subscribe(match=lambda e: e.execution_id == "exec-b")
    assert fanout.subscriber_count == 401
    await publish(settings, [("exec-a", 1), ("exec-b", 1), ("exec-a", 2)])
    for sub in per_execution:
        assert [d.event.seq for d in await drain(sub, 2)] == [1, 2]
    for sub in everything:
        assert sorted((d.event.execution_id, d.event.seq) for d in await drain(sub, 3)) == [
            ("exec-a", 1),
            ("exec-a", 2),
            ("exec-b", 1),
        ]
    assert [d.event.execution_id for d in await drain(only_b, 1)] == ["exec-b"]
    for sub in [*per_execution, *everything, only_b]:
        fanout.unsubscribe(sub)
    assert fanout.subscriber_count == 0


async def test_catch_up_joins_live_delivery_without_gap_or_overlap(
    settings: RunstoreSettings, fanout: EventFanout
) -> None:
    before = fanout.subscribe()
    await publish(settings, [(f"x{i}", 1) for i in range(10)])
    seen = await drain(before, 10)
    resume_from = dict(before.start_positions)
    for d in seen[:4]:  # the client saw four, then went away
        resume_from[d.partition] = max(resume_from[d.partition], d.offset + 1)
    fanout.unsubscribe(before)
    consumed = fanout.records_seen
    await publish(settings, [(f"y{i}", 1) for i in range(5)])
    # Subscribe once the fan-out has read the y records, so they lie before `live`'s
    # start positions (subscribing earlier would rightly deliver them live instead).
    async with asyncio.timeout(20):
        while fanout.records_seen < consumed + 5:  # noqa: ASYNC110 (a counter, no event)
            await asyncio.sleep(0.02)
    live = fanout.subscribe()
    await publish(settings, [(f"z{i}", 1) for i in range(3)])

    caught_up = [
        d.event.execution_id
        async for d in read_between(settings, resume_from, live.start_positions, 0.2)
        if d is not None
    ]
    live_ids = [d.event.execution_id for d in await drain(live, 3)]
    expected_missed = {d.event.execution_id for d in seen[4:]} | {f"y{i}" for i in range(5)}
    # Per partition order is kept; across partitions the order is not defined.
    assert sorted(caught_up) == sorted(expected_missed)
    assert sorted(live_ids) == [f"z{i}" for i in range(3)]


async def test_a_slow_subscriber_is_told_to_resync(
    settings: RunstoreSettings, fanout: EventFanout
) -> None:
    slow = fanout.subscribe(execution_id="busy")
    await publish(settings, [("busy", i) for i in range(1, 80)])
    await wait_for_records(fanout, 79)
    with pytest.raises(SubscriberOverflow):
        await drain(slow, 80)


async def test_one_feed_serves_the_fanout_and_other_topics(settings: RunstoreSettings) -> None:
    """The API's one consumer: events go to the fanout, outcome records to their handler,
    and a handler that raises loses its own records only."""
    await ensure_topics(settings)
    feed = TopicFeed(settings, "test-feed")
    fanout = EventFanout(settings, queue_size=50, feed=feed)
    outcomes: list[bytes] = []
    replies_tried: list[int] = []

    def on_outcomes(_partition: int, records: Sequence[Any]) -> None:
        outcomes.extend(r.value for r in records)

    def on_replies(_partition: int, records: Sequence[Any]) -> None:
        replies_tried.append(len(records))
        raise RuntimeError("a bug in one handler")

    feed.follow(settings.topics.outcomes, on_outcomes)
    feed.follow(settings.topics.replies, on_replies)
    # Published before the feed starts: not delivered (it starts at the ends).
    await publish(settings, [("early", 1)])
    await feed.start()
    await fanout.start()
    try:
        assert set(feed.ends(settings.topics.events)) == set(fanout.subscribe().start_positions)
        sub = fanout.subscribe(execution_id="exec-f")
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topics.replies, b"{}", key=b"exec-f")
            await producer.send_and_wait(settings.topics.outcomes, b"outcome-1", key=b"exec-f")
        finally:
            await producer.stop()
        await publish(settings, [("exec-f", 1)])
        assert [d.event.seq for d in await drain(sub, 1)] == [1]

        async def outcome_arrived() -> None:
            assert outcomes == [b"outcome-1"]
            assert replies_tried == [1]

        await assert_eventually(outcome_arrived)
        assert fanout.records_seen == 1  # "early" came before the ends
    finally:
        await feed.stop()
        await fanout.stop()
