"""The STARTED events direct replies bring (services/api/list_index_feed.py,
`fold_started`): folded into the run list index before the topic's copy, wherever they
fall among the topic's records, they leave the index exactly as folding the topic alone
does; the topic's copy of one is not decoded again; nothing is folded while the index is
not ready."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from schemas.events import Event, EventType
from services.api import event_fanout
from services.api.event_fanout import EventFanout
from services.api.list_index_feed import ListIndexFeed
from services.api.topic_tail import TopicFeed
from services.common.memory_commit_log import MemoryCommitLog
from services.common.readmodels.list_index import RunListIndex
from services.common.readmodels.run_filter import RunFilter
from services.common.readmodels.store import Document
from services.common.settings import ApiSettings
from tests.support.workloads import mixed_workload


@dataclass(frozen=True)
class Record:
    """An events topic record as the feed reads it."""

    key: bytes
    value: bytes
    partition: int
    offset: int


def topic_records(events: list[Event]) -> list[Record]:
    """The events as the engine publishes them (one partition: the workload's order)."""
    return [
        Record(e.execution_id.encode(), e.__pydantic_serializer__.to_json(e), 0, offset)
        for offset, e in enumerate(events)
    ]


def feed_and_fanout() -> tuple[ListIndexFeed, EventFanout, RunListIndex]:
    settings = ApiSettings()
    fanout = EventFanout(settings, feed=TopicFeed(settings, "test"))
    index = RunListIndex()
    feed = ListIndexFeed(settings, None, MemoryCommitLog(), index, fanout)  # type: ignore[arg-type]
    index.ready = True
    feed._subscribe()
    return feed, fanout, index


def deliver(feed: ListIndexFeed, fanout: EventFanout, record: Record) -> list[Event]:
    """The record through the fanout into the feed's subscription and folded as the feed
    folds its deliveries; the events the subscription got."""
    fanout._deliver(record.partition, [record])
    assert feed._sub is not None
    got = [d.event for d in feed._sub.take()]
    for event in got:
        assert feed._apply_in_order(event)
    return got


def state(index: RunListIndex, events: list[Event]) -> tuple[object, ...]:
    runs = sorted({e.run_id for e in events})
    executions = sorted({e.execution_id for e in events})
    pages: list[list[Document]] = [
        index.list_runs(flt, None, 1000)
        for flt in (
            RunFilter(),
            RunFilter(sort_by="end_time"),
            RunFilter(statuses=("RUNNING",)),
            RunFilter(search="nightly"),
        )
    ]
    return (
        pages,
        [index.run_document(r) for r in runs],
        [index.latest_run_document(x) for x in executions],
        len(index),
    )


@pytest.mark.parametrize("seed", range(12))
def test_started_events_from_replies_leave_the_index_as_the_topic_alone_does(seed: int) -> None:
    events = mixed_workload().all_events()
    records = topic_records(events)
    alone = RunListIndex()
    for event in events:
        alone.apply(event)

    rng = random.Random(seed)
    # Each STARTED's reply comes at a random point: up to five records before its own
    # record (a later batch's reply can pass an earlier batch's publish) or after it.
    replies: dict[int, list[Record]] = {}
    for i, (event, record) in enumerate(zip(events, records, strict=True)):
        if event.type is EventType.WORKFLOW_EXECUTION_STARTED and rng.random() < 0.8:
            at = max(0, min(len(records), i + rng.randint(-5, 5)))
            replies.setdefault(at, []).append(record)
    feed, fanout, index = feed_and_fanout()
    delivered: list[Event] = []
    for i, record in enumerate(records):
        feed.fold_started([r.value for r in replies.get(i, [])])
        delivered += deliver(feed, fanout, record)
    feed.fold_started([r.value for r in replies.get(len(records), [])])

    assert state(index, events) == state(alone, events)
    # A STARTED folded from its reply before its topic copy came was not decoded again.
    early = [
        r.offset
        for at, rs in replies.items()
        for r in rs
        if at <= r.offset and events[r.offset].type is EventType.WORKFLOW_EXECUTION_STARTED
    ]
    delivered_ids = {e.event_id for e in delivered}
    skipped = {events[o].event_id for o in early} - delivered_ids
    # Only the replies that came before their topic copy folded anything.
    assert feed.started_from_replies == len(early)
    # (Two early STARTEDs of one execution: the older's copy is decoded, changing nothing.)
    assert len(skipped) >= len({events[o].execution_id for o in early})
    assert delivered_ids | skipped == {e.event_id for e in events}


def test_a_started_event_from_a_reply_answers_a_read_before_the_topic_has_it() -> None:
    events = mixed_workload().all_events()
    first = events[0]
    assert first.type is EventType.WORKFLOW_EXECUTION_STARTED
    feed, fanout, index = feed_and_fanout()
    record = topic_records(events)[0]
    assert index.run_document(first.run_id) is None
    feed.fold_started([record.value])
    row = index.latest_run_document(first.execution_id)
    assert row is not None and (row["run_id"], row["status"]) == (first.run_id, "RUNNING")
    assert deliver(feed, fanout, record) == []  # the topic's copy: skipped, not decoded
    assert index.seq_of(first.run_id) == first.seq


def test_the_topics_copy_is_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    events = mixed_workload().all_events()
    record = topic_records(events)[0]
    feed, fanout, _ = feed_and_fanout()
    feed.fold_started([record.value])
    decoded: list[bytes | None] = []
    real = event_fanout.parse_event

    def counting(raw: bytes | None, partition: int, offset: int) -> Event | None:
        decoded.append(raw)
        return real(raw, partition, offset)

    monkeypatch.setattr(event_fanout, "parse_event", counting)
    deliver(feed, fanout, record)
    assert decoded == []
    deliver(feed, fanout, topic_records(events)[1])  # the next event is decoded
    assert len(decoded) == 1


def test_nothing_is_folded_from_replies_while_the_index_is_not_ready() -> None:
    events = mixed_workload().all_events()
    record = topic_records(events)[0]
    feed, fanout, index = feed_and_fanout()
    index.ready = False
    feed.fold_started([record.value])
    assert len(index) == 0 and feed.started_from_replies == 0
    index.ready = True
    # Its topic copy is then folded as usual.
    assert [e.event_id for e in deliver(feed, fanout, record)] == [events[0].event_id]
    assert index.seq_of(events[0].run_id) == events[0].seq


def test_only_started_events_are_folded_from_replies() -> None:
    events = mixed_workload().all_events()
    records = topic_records(events)
    feed, _, index = feed_and_fanout()
    other = next(
        i for i, e in enumerate(events) if e.type is not EventType.WORKFLOW_EXECUTION_STARTED
    )
    feed.fold_started([records[other].value, b"not json"])
    assert len(index) == 0 and feed.started_from_replies == 0


def test_a_reply_that_comes_after_the_topics_copy_is_not_kept() -> None:
    # A late reply (its frame queued while the engine's link was connecting) finds the
    # run folded already: nothing to fold, and nothing kept to skip a copy that came.
    events = mixed_workload().all_events()
    record = topic_records(events)[0]
    feed, fanout, index = feed_and_fanout()
    assert [e.event_id for e in deliver(feed, fanout, record)] == [events[0].event_id]
    feed.fold_started([record.value])
    assert feed.started_from_replies == 0
    assert not feed._folded_early
    assert index.seq_of(events[0].run_id) == events[0].seq
