"""The API feed's fetcher (services/api/session_fetch.py) when brokers and leaders change,
against fake brokers that keep fetch sessions by KIP-227's rules (the broker's
FetchManager: a full request closes the session it names and, with epoch 0, opens a new
one; an incremental one must name a known session at its next epoch).

No clock: the module's `asyncio.sleep` is replaced by one that notes the delay asked for
and returns at once, and each test drives the loop turn by turn until what it waits for
happens (or fails after a bounded number of turns)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError, NodeNotReadyError, TopicAuthorizationFailedError
from aiokafka.protocol.fetch import FetchRequest_v7
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition

from services.api import session_fetch
from services.api.session_fetch import (
    FetchAnswer,
    PartitionData,
    SessionFetcher,
    SessionFetchRequest,
    TailRecord,
)

Key = tuple[str, int]
_real_sleep = asyncio.sleep
T = "t.events"


def batch(base_offset: int, values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for delta, value in enumerate(values):
        builder.append(delta, 1_000 + delta, None, value, [])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)
    return bytes(data)


@dataclass
class Session:
    epoch: int
    offsets: dict[Key, int]


@dataclass
class FakeBroker:
    """One broker: its partitions' logs, its session cache, errors to answer with."""

    node_id: int
    logs: dict[Key, list[bytes]]
    reachable: bool = True
    cache: dict[int, Session] = field(default_factory=dict)
    errors: dict[Key, list[int]] = field(default_factory=dict)
    """Per partition, the errors of its next answers (one each, then none)."""
    always: dict[Key, int] = field(default_factory=dict)
    """Per partition, an error every answer holds."""
    corrupt: set[Key] = field(default_factory=set)
    """Partitions whose next batch has a wrong checksum (once)."""
    offset_failures: int = 0
    """ListOffsets requests to refuse (the node not ready) before answering."""
    requests: list[Any] = field(default_factory=list)
    most_sessions: int = 0
    next_id: int = 100

    def fetch(self, request: Any) -> FetchAnswer:
        self.requests.append(request)
        named = {(t, p): offset for t, parts in request.topics for p, offset, _, _ in parts}
        epoch, session_id = request.session_epoch, request.session_id
        if epoch in (0, -1):  # full: closes the session it names
            self.cache.pop(session_id, None)
            session = Session(1, dict(named))
            answer_id = 0
            if epoch == 0:
                self.next_id += 1
                answer_id = self.next_id
                self.cache[answer_id] = session
            answer = self._answer(session, named, full=True)
            self.most_sessions = max(self.most_sessions, len(self.cache))
            return FetchAnswer(0, answer_id, answer)
        held = self.cache.get(session_id)
        if held is None:
            return FetchAnswer(70, 0, [])
        if held.epoch != epoch:
            return FetchAnswer(71, 0, [])
        held.epoch += 1
        held.offsets.update(named)
        for topic, numbers in request.forgotten_topics_data:
            for number in numbers:
                held.offsets.pop((topic, number), None)
        return FetchAnswer(0, session_id, self._answer(held, named, full=False))

    def _answer(self, session: Session, named: dict[Key, int], full: bool) -> list[PartitionData]:
        out = []
        for key, offset in sorted(session.offsets.items()):
            log = self.logs.get(key)
            error = self.always.get(key, 0)
            if not error and self.errors.get(key):
                error = self.errors[key].pop(0)
            if log is None and not error:
                error = 6  # NOT_LEADER_OR_FOLLOWER: not ours
            if not error and offset > len(log or []):
                error = 1
            records = None
            if not error and log is not None and offset < len(log):
                records = batch(offset, log[offset:])
                if key in self.corrupt:
                    self.corrupt.discard(key)
                    records = records[:-3] + bytes([records[-3] ^ 0xFF]) + records[-2:]
            if full or error or records is not None or key in named:
                high = len(log) if log is not None else -1
                out.append(PartitionData(key[0], key[1], error, high, records))
        return out

    def list_offsets(self, request: Any) -> Any:
        if self.offset_failures:
            self.offset_failures -= 1
            raise NodeNotReadyError(f"node {self.node_id}")
        topics = [
            (topic, [(p, 0, -1, len(self.logs.get((topic, p), []))) for p, _ in parts])
            for topic, parts in request._topics
        ]
        return SimpleNamespace(topics=topics)

    def named_in(self, request: Any) -> set[Key]:
        return {(t, p) for t, parts in request.topics for p, *_ in parts}


class FakeClient:
    """What SessionFetcher uses of aiokafka's client: `send`, `cluster`'s leaders and
    `force_metadata_update` (which applies `next_leaders`, if any)."""

    def __init__(self, brokers: list[FakeBroker], leaders: dict[Key, int]) -> None:
        self.brokers = {b.node_id: b for b in brokers}
        self.leaders = dict(leaders)
        self.next_leaders: dict[Key, int] = {}
        self.metadata_updates = 0
        self.cluster = SimpleNamespace(leader_for_partition=self._leader)

    def _leader(self, tp: TopicPartition) -> int | None:
        return self.leaders.get((tp.topic, tp.partition))

    async def force_metadata_update(self) -> bool:
        self.metadata_updates += 1
        self.leaders.update(self.next_leaders)
        return True

    async def send(self, node_id: int, request: Any) -> Any:
        await _real_sleep(0)  # a round trip: other tasks run meanwhile
        broker = self.brokers[node_id]
        if not broker.reachable:
            raise NodeNotReadyError(f"node {node_id}")
        if isinstance(request, SessionFetchRequest):
            decoded = FetchRequest_v7.decode(request.prepare({1: (0, 16)}).encode())
            return broker.fetch(decoded)
        if isinstance(request, OffsetRequest):
            return broker.list_offsets(request)
        raise AssertionError(f"unexpected request {request!r}")


class Delivered:
    def __init__(self) -> None:
        self.got: dict[Key, list[TailRecord]] = {}

    def __call__(self, topic: str, partition: int, records: list[TailRecord]) -> None:
        self.got.setdefault((topic, partition), []).extend(records)

    def values(self, key: Key) -> list[bytes | None]:
        return [r.value for r in self.got.get(key, [])]

    def offsets(self, key: Key) -> list[int]:
        return [r.offset for r in self.got.get(key, [])]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the fetcher asked `asyncio.sleep` for (each returns at once)."""
    asked: list[float] = []

    async def noted(delay: float) -> None:
        asked.append(delay)
        await _real_sleep(0)

    proxy = SimpleNamespace(**{name: getattr(asyncio, name) for name in dir(asyncio)})
    proxy.sleep = noted
    monkeypatch.setattr(session_fetch, "asyncio", proxy)
    return asked


async def drive(until: Callable[[], bool], turns: int = 20_000) -> None:
    for _ in range(turns):
        if until():
            return
        await _real_sleep(0)
    raise AssertionError("not reached")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def start(fetcher: SessionFetcher) -> asyncio.Task[None]:
    return asyncio.create_task(fetcher.run())


async def test_partitions_of_an_unreachable_broker_follow_their_new_leader(
    sleeps: list[float],
) -> None:
    # Broker 1 led both partitions and cannot be reached; the metadata says 2 leads now.
    logs = {(T, 0): [b"a", b"b"], (T, 1): [b"c"]}
    one = FakeBroker(1, {}, reachable=False)
    two = FakeBroker(2, logs)
    client = FakeClient([one, two], {(T, 0): 1, (T, 1): 1})
    client.next_leaders = {(T, 0): 2, (T, 1): 2}
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0, (T, 1): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: len(delivered.values((T, 0))) == 2 and bool(delivered.got.get((T, 1))))
    finally:
        await stop(task)
    assert delivered.values((T, 0)) == [b"a", b"b"]
    assert delivered.values((T, 1)) == [b"c"]
    assert client.metadata_updates >= 1


async def test_a_routing_error_backs_off_and_keeps_one_session_and_the_other_partitions(
    sleeps: list[float],
) -> None:
    # Broker 1 keeps refusing partition 0 (it is not its leader) and the metadata keeps
    # saying it is: partition 0 is asked again after ever longer waits, in the same
    # session (forgotten, then named again), while partition 1 flows.
    logs = {(T, 0): [b"x"], (T, 1): [b"a"]}
    one = FakeBroker(1, logs, always={(T, 0): 6})
    client = FakeClient([one], {(T, 0): 1, (T, 1): 1})
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0, (T, 1): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)

    def asked_for_zero() -> int:
        return sum((T, 0) in one.named_in(r) for r in one.requests)

    try:
        await drive(lambda: asked_for_zero() >= 10)
        logs[T, 1].append(b"b")
        await drive(lambda: len(delivered.values((T, 1))) == 2)
        assert not task.done()
    finally:
        await stop(task)
    assert delivered.values((T, 1)) == [b"a", b"b"]
    assert delivered.values((T, 0)) == []
    # One session all along (never a second one left in the broker's cache) ...
    assert one.most_sessions == 1
    assert sum(r.session_epoch == 0 for r in one.requests) == 1
    # ... and waits that doubled up to a cap of about a second: 0.1, 0.2, 0.4, 0.8, 1, 1 ...
    assert sum(sleeps) >= 0.8 * (0.1 + 0.2 + 0.4 + 0.8 + 5 * 1.0)
    assert max(sleeps) <= 1.2
    assert client.metadata_updates >= 9


async def test_a_leader_move_takes_one_partition_to_the_new_leader_alone(
    sleeps: list[float],
) -> None:
    logs_one = {(T, 0): [b"a"], (T, 1): [b"p"]}
    one = FakeBroker(1, logs_one)
    two = FakeBroker(2, {(T, 0): [b"a", b"b"]})
    client = FakeClient([one, two], {(T, 0): 1, (T, 1): 1})
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0, (T, 1): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: delivered.values((T, 0)) == [b"a"])
        one.always[T, 0] = 6
        client.next_leaders = {(T, 0): 2}
        await drive(lambda: delivered.values((T, 0)) == [b"a", b"b"])
        logs_one[T, 1].append(b"q")
        await drive(lambda: len(delivered.values((T, 1))) == 2)
    finally:
        await stop(task)
    assert delivered.offsets((T, 0)) == [0, 1]
    assert delivered.values((T, 1)) == [b"p", b"q"]
    # Broker 1's session forgot partition 0 and went on (no second full fetch).
    forgotten = [r.forgotten_topics_data for r in one.requests if r.forgotten_topics_data]
    assert forgotten and forgotten[0] == [(T, [0])]
    assert sum(r.session_epoch == 0 for r in one.requests) == 1


async def test_a_partition_without_a_leader_waits_alone(sleeps: list[float]) -> None:
    logs = {(T, 0): [b"late"], (T, 1): [b"a", b"b"]}
    one = FakeBroker(1, logs)
    client = FakeClient([one], {(T, 0): -1, (T, 1): 1})
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0, (T, 1): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: len(delivered.values((T, 1))) == 2)
        assert delivered.values((T, 0)) == []
        updates = client.metadata_updates
        await drive(lambda: client.metadata_updates >= updates + 3)
        client.next_leaders = {(T, 0): 1}
        await drive(lambda: delivered.values((T, 0)) == [b"late"])
    finally:
        await stop(task)
    assert delivered.values((T, 1)) == [b"a", b"b"]
    assert sleeps and max(sleeps) <= 1.2


async def test_an_end_offset_that_fails_is_asked_again(sleeps: list[float]) -> None:
    # Partition 0's position is past its log; the ListOffsets that follows fails twice.
    logs = {(T, 0): [b"a", b"b"]}
    one = FakeBroker(1, logs, offset_failures=2)
    client = FakeClient([one], {(T, 0): 1})
    delivered = Delivered()
    positions = {(T, 0): 50}
    fetcher = SessionFetcher(client, positions, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: positions[T, 0] == 2)
        logs[T, 0].append(b"c")
        await drive(lambda: delivered.values((T, 0)) == [b"c"])
    finally:
        await stop(task)
    assert one.offset_failures == 0
    assert delivered.offsets((T, 0)) == [2]


async def test_a_replica_not_available_is_retried_with_the_position_kept(
    sleeps: list[float],
) -> None:
    logs = {(T, 0): [b"a", b"b"], (T, 1): [b"c"]}
    one = FakeBroker(1, logs, errors={(T, 0): [9, 9]})
    client = FakeClient([one], {(T, 0): 1, (T, 1): 1})
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0, (T, 1): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: delivered.values((T, 0)) == [b"a", b"b"])
    finally:
        await stop(task)
    assert not one.errors[T, 0]
    assert delivered.values((T, 1)) == [b"c"]
    assert delivered.offsets((T, 0)) == [0, 1]


@pytest.mark.parametrize("code", [74, 78])  # FENCED_LEADER_EPOCH, OFFSET_NOT_AVAILABLE
async def test_a_retried_code_aiokafka_does_not_know_is_retried(
    sleeps: list[float], code: int
) -> None:
    one = FakeBroker(1, {(T, 0): [b"a"]}, errors={(T, 0): [code]})
    client = FakeClient([one], {(T, 0): 1})
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: delivered.values((T, 0)) == [b"a"])
    finally:
        await stop(task)
    assert delivered.offsets((T, 0)) == [0]


async def test_a_code_nobody_knows_ends_the_fetcher_not_retried_forever(
    sleeps: list[float],
) -> None:
    # aiokafka maps unknown codes to UnknownError (errno -1, UNKNOWN_SERVER_ERROR's, which
    # is retried): the code itself decides.
    one = FakeBroker(1, {(T, 0): [b"a"]}, errors={(T, 0): [999]})
    client = FakeClient([one], {(T, 0): 1})
    fetcher = SessionFetcher(client, {(T, 0): 0}, Delivered())  # type: ignore[arg-type]
    with pytest.raises(KafkaError, match="error code 999"):
        await asyncio.wait_for(fetcher.run(), 5)


async def test_a_batch_with_a_wrong_checksum_is_fetched_again(sleeps: list[float]) -> None:
    logs = {(T, 0): [b"a", b"b"]}
    one = FakeBroker(1, logs, corrupt={(T, 0)})
    client = FakeClient([one], {(T, 0): 1})
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: delivered.values((T, 0)) == [b"a", b"b"])
    finally:
        await stop(task)
    assert not one.corrupt
    assert delivered.offsets((T, 0)) == [0, 1]


async def test_stopping_closes_every_session(sleeps: list[float]) -> None:
    one = FakeBroker(1, {(T, 0): [b"a"]})
    two = FakeBroker(2, {(T, 1): [b"b"]})
    client = FakeClient([one, two], {(T, 0): 1, (T, 1): 2})
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0, (T, 1): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: len(delivered.got) == 2 and bool(one.cache) and bool(two.cache))
    finally:
        await stop(task)
    assert one.cache == {} and two.cache == {}
    assert one.requests[-1].session_epoch == -1 and two.requests[-1].session_epoch == -1


async def test_a_lost_session_is_replaced_and_closed_by_the_new_full_fetch(
    sleeps: list[float],
) -> None:
    logs = {(T, 0): [b"a"]}
    one = FakeBroker(1, logs)
    client = FakeClient([one], {(T, 0): 1})
    delivered = Delivered()
    fetcher = SessionFetcher(client, {(T, 0): 0}, delivered)  # type: ignore[arg-type]
    task = start(fetcher)
    try:
        await drive(lambda: delivered.values((T, 0)) == [b"a"])
        fetcher.sessions[1].epoch += 5  # out of step: the broker refuses it (71)
        await drive(lambda: fetcher.sessions_lost == 1)
        logs[T, 0].append(b"b")
        await drive(lambda: delivered.values((T, 0)) == [b"a", b"b"])
        # The new session's full fetch named the refused one: the broker dropped it.
        assert sum(r.session_epoch == 0 for r in one.requests) == 2
        assert one.most_sessions == 1
    finally:
        await stop(task)
    assert fetcher.sessions_lost == 1
    assert delivered.offsets((T, 0)) == [0, 1]


async def test_an_error_that_is_not_retriable_ends_the_fetcher_and_closes_sessions(
    sleeps: list[float],
) -> None:
    one = FakeBroker(1, {(T, 0): [b"a"], (T, 1): [b"b"]}, errors={(T, 1): [29]})
    client = FakeClient([one], {(T, 0): 1, (T, 1): 1})
    fetcher = SessionFetcher(client, {(T, 0): 0, (T, 1): 0}, Delivered())  # type: ignore[arg-type]
    with pytest.raises(TopicAuthorizationFailedError):
        await asyncio.wait_for(fetcher.run(), 5)
    assert one.cache == {}
