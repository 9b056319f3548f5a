"""Fetches for the API's topic feeds (topic_tail.py) in an incremental fetch session
(KIP-227), with the request built and the response read here instead of by aiokafka's
consumer.

Why: the API follows every partition of its topics (24 for outcomes and events) and
aiokafka's consumer names each of them in every fetch request and parses each of them in
every response, in Python, whether or not it holds records (~3 us per partition and fetch;
a quarter of the API's CPU per start went to aiokafka, docs/write-path-cost.md). In a
fetch session the broker keeps the partitions and their fetch offsets: a request names
only the partitions whose offset moved since the last one (those that brought records),
and a response holds only the partitions that have records (or a changed high watermark,
or an error). A response is read with `struct` straight from its bytes, and the records of
a partition with data are decoded by aiokafka's record batch reader (C).

aiokafka's client still does the connections, the version negotiation and the metadata;
the requests are FetchRequest v7 (the first with sessions; every broker since Kafka 2.1
takes it, fetch sessions are on by default).

What a `SessionFetcher` keeps exact, as the consumer did: each partition is read in
offset order from the position it was given, with no gap and no repeat (a position moves
only once its records are handed over; a response that answers an older position is
dropped); control batches are skipped (read_uncommitted, like the consumer's default);
a position out of the log's range is reset to the log's end, as the consumer's default
`auto_offset_reset="latest"` did. Errors of the session itself (an evicted session, an
epoch out of step) start a new session: the next request is a full one again.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, for_code
from aiokafka.protocol.api import Request, RequestHeader_v1, ResponseHeader_v0
from aiokafka.protocol.fetch import FetchRequest_v7
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)

FETCH_VERSION = 7
_FETCH_KEY = 1
_INITIAL_EPOCH = 0
"""A full fetch that asks the broker to open a session."""
_SESSION_ERRORS = frozenset({70, 71})
"""FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH: open a new session."""
_OUT_OF_RANGE = 1
_ROUTING_ERRORS = frozenset({3, 5, 6, 56, 74, 75})
"""UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
KAFKA_STORAGE_ERROR, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH: the partition is to be
read from another broker (after a metadata update)."""
_LATEST = -1
_LEADER_TRIES = 100
"""ListOffsets' timestamp for a partition's end."""
_YIELD_AFTER_RECORDS = 5000
"""Records handed over from one response before the next partition's wait a loop turn
(aiokafka's consumer handed the feed at most 5,000 per `getmany`)."""

_HEAD = struct.Struct(">iiiibii")
_PARTITION = struct.Struct(">iqqi")
_COUNT = struct.Struct(">i")
_SHORT = struct.Struct(">h")
_RESPONSE_HEAD = struct.Struct(">ihii")  # throttle, error, session id, topic count
_PARTITION_HEAD = struct.Struct(">ihqqqi")  # partition, error, hw, lso, log start, aborted
_LONG_PAIR = struct.Struct(">qq")

TopicPartitionKey = tuple[str, int]


@dataclass(slots=True)
class TailRecord:
    """One consumed record, with the attributes of aiokafka's `ConsumerRecord` that the
    feed's handlers read."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


@dataclass(slots=True)
class PartitionData:
    """One partition of a fetch response."""

    topic: str
    partition: int
    error: int
    high_watermark: int
    records: bytes | None


@dataclass(slots=True)
class FetchAnswer:
    error: int
    session_id: int
    partitions: list[PartitionData]


class _FetchResponse:
    """What aiokafka's connection calls to decode a response: `decode(buffer)`."""

    @staticmethod
    def decode(buffer: BytesIO) -> FetchAnswer:
        return parse_fetch_response(buffer.getbuffer()[buffer.tell() :].tobytes())


class _EncodedFetch:
    """A FetchRequest v7 as aiokafka's connection sends a request struct: its header,
    its body's bytes, how to read the answer."""

    API_KEY = _FETCH_KEY
    API_VERSION = FETCH_VERSION
    FLEXIBLE_VERSION = False
    RESPONSE_TYPE = _FetchResponse

    def __init__(self, body: bytes) -> None:
        self._body = body

    def build_request_header(self, correlation_id: int, client_id: str) -> Any:
        return RequestHeader_v1(self, correlation_id=correlation_id, client_id=client_id)

    def encode(self) -> bytes:
        return self._body

    def parse_response_header(self, buffer: BytesIO | bytes) -> Any:
        return ResponseHeader_v0.decode(buffer)


class SessionFetchRequest(Request[FetchRequest_v7]):  # type: ignore[misc]
    API_KEY = _FETCH_KEY

    def __init__(self, body: bytes) -> None:
        self._body = body

    def build(self, request_struct_class: Any) -> Any:  # not used: `prepare` is
        raise NotImplementedError

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        low, high = versions.get(_FETCH_KEY, (0, -1))
        if not low <= FETCH_VERSION <= high:
            raise IncompatibleBrokerVersion(f"the broker takes FetchRequest v{low}-v{high}")
        return _EncodedFetch(self._body)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _SHORT.pack(len(raw)) + raw


def encode_fetch(
    *,
    max_wait_ms: int,
    min_bytes: int,
    max_bytes: int,
    session_id: int,
    epoch: int,
    partitions: Iterable[tuple[str, int, int]],
    partition_max_bytes: int,
    forgotten: Iterable[tuple[str, int]] = (),
) -> bytes:
    """The body of a FetchRequest v7 (read_uncommitted) naming `partitions` as (topic,
    partition, fetch offset), and dropping `forgotten` from the session."""
    by_topic: dict[str, list[bytes]] = {}
    for topic, partition, offset in partitions:
        by_topic.setdefault(topic, []).append(
            _PARTITION.pack(partition, offset, -1, partition_max_bytes)
        )
    parts = [_HEAD.pack(-1, max_wait_ms, min_bytes, max_bytes, 0, session_id, epoch)]
    parts.append(_COUNT.pack(len(by_topic)))
    for topic, packed in by_topic.items():
        parts += (_string(topic), _COUNT.pack(len(packed)), *packed)
    gone: dict[str, list[int]] = {}
    for topic, partition in forgotten:
        gone.setdefault(topic, []).append(partition)
    parts.append(_COUNT.pack(len(gone)))
    for topic, numbers in gone.items():
        parts += (_string(topic), _COUNT.pack(len(numbers)))
        parts += [_COUNT.pack(n) for n in numbers]
    return b"".join(parts)


def parse_fetch_response(data: bytes) -> FetchAnswer:
    """A FetchResponse v7's body (after the response header). Records stay bytes."""
    _, error, session_id, topics = _RESPONSE_HEAD.unpack_from(data, 0)
    at = _RESPONSE_HEAD.size
    partitions: list[PartitionData] = []
    for _ in range(topics):
        (length,) = _SHORT.unpack_from(data, at)
        at += 2
        topic = data[at : at + length].decode()
        at += length
        (count,) = _COUNT.unpack_from(data, at)
        at += 4
        for _ in range(count):
            number, p_error, high_watermark, _lso, _start, aborted = _PARTITION_HEAD.unpack_from(
                data, at
            )
            at += _PARTITION_HEAD.size
            if aborted > 0:
                at += aborted * _LONG_PAIR.size
            (size,) = _COUNT.unpack_from(data, at)
            at += 4
            records = None
            if size > 0:
                records = data[at : at + size]
                at += size
            partitions.append(PartitionData(topic, number, p_error, high_watermark, records))
    return FetchAnswer(error, session_id, partitions)


def read_records(
    topic: str, partition: int, position: int, raw: bytes
) -> tuple[list[TailRecord], int]:
    """The records of `raw` (a partition's record batches) at or past `position`, and the
    position after them. Control batches are skipped (their offsets are passed over); a
    batch whose checksum is wrong raises (the fetch is retried)."""
    found: list[TailRecord] = []
    batches = MemoryRecords(raw)
    while batches.has_next():
        batch = batches.next_batch()
        if batch is None:
            break
        if not batch.validate_crc():
            raise KafkaError(f"record batch with a wrong checksum in {topic}/{partition}")
        if not batch.is_control_batch:
            for record in batch:
                if record.offset >= position:
                    found.append(
                        TailRecord(
                            topic,
                            partition,
                            record.offset,
                            record.timestamp,
                            record.key,
                            record.value,
                            record.headers,
                        )
                    )
        position = max(position, batch.next_offset)
    return found, position


class FetchSession:
    """One broker's fetch session: its id, the next epoch, the offsets it holds, and
    the partitions whose position moved since the last request (the next incremental
    request names only those)."""

    def __init__(self) -> None:
        self.session_id = 0
        self.epoch = _INITIAL_EPOCH
        self.offsets: dict[TopicPartitionKey, int] = {}
        self.moved: set[TopicPartitionKey] = set()

    def reset(self) -> None:
        self.session_id, self.epoch, self.offsets = 0, _INITIAL_EPOCH, {}
        self.moved.clear()


Deliver = Callable[[str, int, list[TailRecord]], None]
"""Called with a topic, a partition and its records in offset order."""


class SessionFetcher:
    """Reads `positions` (topic, partition → next offset) forward from their leaders,
    handing records to `deliver` and moving the positions past them (the dict is the
    caller's too: it reads the positions, never writes them while this runs)."""

    def __init__(
        self,
        client: AIOKafkaClient,
        positions: dict[TopicPartitionKey, int],
        deliver: Deliver,
        *,
        max_wait_ms: int = 500,
        min_bytes: int = 1,
        max_bytes: int = 52_428_800,
        partition_max_bytes: int = 1_048_576,
        retry_seconds: float = 0.1,
    ) -> None:
        self._client = client
        self.positions = positions
        self._deliver = deliver
        self._max_wait_ms = max_wait_ms
        self._min_bytes = min_bytes
        self._max_bytes = max_bytes
        self._partition_max_bytes = partition_max_bytes
        self._retry_seconds = retry_seconds
        self.requests = 0
        """Fetch requests sent (for tests and benches)."""
        self.sessions: dict[int, FetchSession] = {}
        """The fetch session with each broker (for tests)."""
        self.sessions_lost = 0
        """Sessions the broker no longer knew, or whose epoch it refused."""

    async def run(self) -> None:
        """Fetch until cancelled: one task per leader broker, each with its own session;
        a partition that must move to another broker restarts them all after a metadata
        update. Raises what is not a broker's transient error."""
        if not self.positions:  # nothing to follow (a feed nobody follows a topic of)
            await asyncio.Event().wait()
        while True:
            by_node = self._leaders()
            if by_node is None:
                await self._client.force_metadata_update()
                await asyncio.sleep(self._retry_seconds)
                continue
            tasks = [
                asyncio.create_task(self._follow_node(node, tps), name=f"fetch:{node}")
                for node, tps in by_node.items()
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                task.result()  # raises what ended it, if anything
            await self._client.force_metadata_update()

    def _leaders(self) -> dict[int, list[TopicPartitionKey]] | None:
        """The partitions by leader broker; None while one has no known leader."""
        by_node: dict[int, list[TopicPartitionKey]] = {}
        for key in self.positions:
            node = self._client.cluster.leader_for_partition(TopicPartition(*key))
            if node is None or node == -1:
                return None
            by_node.setdefault(node, []).append(key)
        return by_node

    async def _follow_node(self, node: int, tps: list[TopicPartitionKey]) -> None:
        """Fetch `tps` from `node` until one of them is to be read elsewhere (returns)."""
        session = self.sessions[node] = FetchSession()
        positions = self.positions
        while True:
            full = session.epoch == _INITIAL_EPOCH
            if full:
                named = [(t, p, positions[t, p]) for t, p in tps]
            else:
                named = [(t, p, positions[t, p]) for t, p in session.moved]
            session.moved.clear()
            body = encode_fetch(
                max_wait_ms=self._max_wait_ms,
                min_bytes=self._min_bytes,
                max_bytes=self._max_bytes,
                session_id=session.session_id,
                epoch=session.epoch,
                partitions=named,
                partition_max_bytes=self._partition_max_bytes,
            )
            self.requests += 1
            try:
                answer: FetchAnswer = await self._client.send(node, SessionFetchRequest(body))
            except KafkaError as exc:
                if not exc.retriable:  # (an old broker, …): the feed fails, as it did
                    raise
                # (Positions did not move: the next session's full fetch names them all.)
                log.warning("fetch from broker %s failed: %s; retrying", node, exc)
                session.reset()
                await asyncio.sleep(self._retry_seconds)
                continue
            if answer.error in _SESSION_ERRORS:
                log.info("fetch session with broker %s lost (error %d)", node, answer.error)
                self.sessions_lost += 1
                session.reset()
                continue
            if answer.error:
                raise for_code(answer.error)(f"fetch from broker {node}")
            for topic, partition, offset in named:
                session.offsets[topic, partition] = offset
            if full:
                # No id: the broker keeps no session for us (its cache is full); ask again.
                if answer.session_id:
                    session.session_id, session.epoch = answer.session_id, 1
            else:
                session.epoch = session.epoch + 1 if session.epoch < 0x7FFFFFFF else 1
            if not await self._take(node, answer, session):
                return

    async def _take(self, node: int, answer: FetchAnswer, session: FetchSession) -> bool:
        """Hand the answer's records over; False if a partition must move to another
        broker."""
        positions = self.positions
        handed = 0
        for data in answer.partitions:
            key = (data.topic, data.partition)
            position = positions.get(key)
            if position is None or session.offsets.get(key) != position:
                continue  # not ours, or answers an older position (never, but exact)
            if data.error == _OUT_OF_RANGE:
                end = await self._end_offset(node, data.topic, data.partition)
                log.warning(
                    "%s/%d: offset %d is out of the log's range; reading on from its end %d",
                    data.topic,
                    data.partition,
                    position,
                    end,
                )
                positions[key] = end
                session.moved.add(key)
                continue
            if data.error in _ROUTING_ERRORS:
                log.info("%s/%d: error %d; looking up its leader", *key, data.error)
                return False
            if data.error:
                raise for_code(data.error)(f"fetch of {data.topic}/{data.partition}")
            if data.records is None:
                continue
            records, after = read_records(data.topic, data.partition, position, data.records)
            # Moved before the hand-over: a handler that raises does not get them again.
            positions[key] = after
            if after != position:
                session.moved.add(key)
            if records:
                self._deliver(data.topic, data.partition, records)
                handed += len(records)
                if handed >= _YIELD_AFTER_RECORDS:
                    # A long catch-up: let the rest of the loop (requests, the folds of
                    # what was handed over) run between partitions.
                    handed = 0
                    await asyncio.sleep(0)
        return True

    async def _end_offset(self, node: int, topic: str, partition: int) -> int:
        return (await _ends_from(self._client, node, [(topic, partition)]))[topic, partition]


async def end_offsets(
    client: AIOKafkaClient, keys: Iterable[TopicPartitionKey]
) -> dict[TopicPartitionKey, int]:
    """The end offset (the next record's) of each partition, asked of its leader."""
    by_node: dict[int, list[TopicPartitionKey]] = {}
    for key in keys:
        node = client.cluster.leader_for_partition(TopicPartition(*key))
        if node is None or node == -1:
            raise KafkaError(f"no leader known for {key[0]}/{key[1]}")
        by_node.setdefault(node, []).append(key)
    ends: dict[TopicPartitionKey, int] = {}
    for node, asked in by_node.items():
        ends.update(await _ends_from(client, node, asked))
    return ends


async def ends_when_led(
    client: AIOKafkaClient, keys: list[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The end offsets of `keys` once each has a leader that answers (a topic just
    created may have none yet: its metadata and leaders are asked again meanwhile)."""
    for _ in range(_LEADER_TRIES - 1):
        try:
            if all(
                client.cluster.leader_for_partition(TopicPartition(*k)) not in (None, -1)
                for k in keys
            ):
                return await end_offsets(client, keys)
        except KafkaError as exc:
            if not exc.retriable:
                raise
        await client.force_metadata_update()
        await asyncio.sleep(0.1)
    return await end_offsets(client, keys)


async def _ends_from(
    client: AIOKafkaClient, node: int, keys: list[TopicPartitionKey]
) -> dict[TopicPartitionKey, int]:
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for topic, partition in keys:
        by_topic.setdefault(topic, []).append((partition, _LATEST))
    response = await client.send(node, OffsetRequest(-1, 0, list(by_topic.items())))
    ends: dict[TopicPartitionKey, int] = {}
    for topic, parts in response.topics:
        for part in parts:  # v1+: (partition, error, timestamp, offset[, leader epoch])
            if part[1]:
                raise for_code(part[1])(f"end offset of {topic}/{part[0]}")
            ends[topic, part[0]] = int(part[3])
    missing = set(keys) - ends.keys()
    if missing:
        raise KafkaError(f"no end offsets for {sorted(missing)}")
    return ends
