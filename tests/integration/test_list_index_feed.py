"""The run list index's hand-over on a real broker: it catches up with a consumer of its
own, then takes its events from the API's event fanout (on the one `TopicFeed`) — every
event folded exactly once, whether it arrives before, during or after the hand-over, and
when the index's subscription overflows (the index then reads on its own again)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.events import EVENT_ADAPTER, EventType
from services.api import list_index_feed
from services.api.event_fanout import EventFanout
from services.api.list_index_feed import ListIndexFeed
from services.api.topic_tail import TopicFeed
from services.common.kafka_topics import ensure_topics
from services.common.memory_commit_log import MemoryCommitLog
from services.common.readmodels.list_index import RunListIndex
from services.common.settings import ApiSettings, ListIndexMode, RunstoreSettings
from tests.support.eventually import assert_eventually


def started(execution_id: str) -> bytes:
    event = EVENT_ADAPTER.validate_python(
        {
            "type": EventType.WORKFLOW_EXECUTION_STARTED.value,
            "event_id": f"{execution_id}:1:0",
            "execution_id": execution_id,
            "seq": 1,
            "index": 0,
            "event_number": 1,
            "run_id": f"run-{execution_id}",
            "workflow_name": "wf",
            "root_execution_id": execution_id,
            "timestamp_ns": 1_800_000_000_000_000_000,
            "command_id": f"c-{execution_id}",
            "attributes": {"task_id": "t", "workflow_name": "wf", "input": {}},
        }
    )
    return EVENT_ADAPTER.dump_json(event)


async def publish(producer: AIOKafkaProducer, topic: str, ids: range, tag: str) -> None:
    sent = [
        await producer.send(topic, started(f"{tag}-{i}"), key=f"{tag}-{i}".encode()) for i in ids
    ]
    await asyncio.gather(*sent)


class _LateConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    async def getmany(self, *partitions: Any, **options: Any) -> Any:
        await asyncio.sleep(0.1)
        return await super().getmany(*partitions, **options)


@pytest.mark.parametrize("max_queued", [10_000, 25])
async def test_the_index_folds_every_event_once_across_the_hand_over_to_the_feed(
    settings: RunstoreSettings,
    mongo_db: Any,
    monkeypatch: pytest.MonkeyPatch,
    max_queued: int,
) -> None:
    # 25: the feed's queue overflows again and again (the index reads on its own meanwhile).
    monkeypatch.setattr(list_index_feed, "_MAX_QUEUED", max_queued)
    # The index's own consumer fetches late, so that it brings records the feed has
    # queued meanwhile: the overlap the hand-over must fold once.
    monkeypatch.setattr(list_index_feed, "AIOKafkaConsumer", _LateConsumer)
    api = ApiSettings(**settings.model_dump(), api_list_index=ListIndexMode.MEMORY)
    await ensure_topics(api)
    topic = api.topics.events
    producer = AIOKafkaProducer(bootstrap_servers=api.kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    feed = TopicFeed(api, "test-feed")
    fanout = EventFanout(api, feed=feed)
    index = RunListIndex()
    follower = ListIndexFeed(api, mongo_db, MemoryCommitLog(), index, fanout)
    try:
        await publish(producer, topic, range(300), "before")  # read by the index's own consumer
        await feed.start()
        await fanout.start()
        await follower.start()
        # During the catch-up and after it: records both the feed and the index's own
        # consumer bring (those must be folded once), then the feed's alone.
        published = 300
        for _ in range(60):
            await publish(producer, topic, range(published, published + 10), "run")
            published += 10
            await asyncio.sleep(0.02)

        async def all_folded_through_the_feed() -> None:
            assert len(index) == published
            assert follower._consumer is None  # no consumer of its own left

        await assert_eventually(all_folded_through_the_feed, timeout=60)
        await asyncio.sleep(0.5)  # a duplicate would show in the count
        assert follower.events_applied == published
        assert (follower.subscriptions_lost > 0) is (max_queued < 10_000)
        assert fanout.subscriber_count == 0  # the index's subscription is not a stream's
    finally:
        await follower.stop()
        await feed.stop()
        await fanout.stop()
        await producer.stop()
