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
epoch out of step) start a new session: the next request is a full one again, naming the
old session so that the broker drops it. Retriable errors are retried per partition after
a metadata update and a back-off, the other partitions flowing meanwhile
(`SessionFetcher`); sessions are closed when the fetcher stops.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import (
    CorruptRecordException,
    IncompatibleBrokerVersion,
    KafkaError,
    for_code,
)
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
_FINAL_EPOCH = -1
"""A full fetch that closes the session it names and opens none."""
_OUT_OF_RANGE = 1
_RETRIED_CODES = frozenset({-1, 2, 3, 5, 6, 9, 56, 74, 75, 78})
"""Partition and response errors retried after a metadata update, with the position
kept, beside those aiokafka marks retriable (timeouts, ...): UNKNOWN_SERVER_ERROR,
CORRUPT_MESSAGE, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
REPLICA_NOT_AVAILABLE, KAFKA_STORAGE_ERROR, FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH,
OFFSET_NOT_AVAILABLE. The Java consumer retries these (most after a metadata update);
aiokafka marks some of them not retriable (9, 74, 75, 2)."""
_LATEST = -1
"""ListOffsets' timestamp for a partition's end."""
_LEADER_TRIES = 100
"""How many times `ends_when_led` looks for every partition's leader (0.1 s apart, metadata
asked again each time) before it asks for the ends anyway."""
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
        batch whose checksum is wrong raises `CorruptRecordException` (the partition is fetched
    again after a back-off)."""
    found: list[TailRecord] = []
    batches = MemoryRecords(raw)
    while batches.has_next():
        batch = batches.next_batch()
        if batch is None:
            break
        if not batch.validate_crc():
            raise CorruptRecordException(
                f"record batch with a wrong checksum in {topic}/{partition} at {batch.base_offset}"
            )
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
    """One broker's fetch session as this side holds it: its id (0: none), the next
    epoch (0: the next request is a full one), the fetch offsets the broker holds for
    it, and what the next incremental request must tell the broker: the partitions whose
    position moved or that joined (named with their position), and those that left
    (forgotten)."""

    def __init__(self) -> None:
        self.session_id = 0
        self.epoch = _INITIAL_EPOCH
        self.offsets: dict[TopicPartitionKey, int] = {}
        self.moved: set[TopicPartitionKey] = set()
        self.forgotten: set[TopicPartitionKey] = set()

    def reset(self) -> None:
        """The next request is a full one. The id is kept: a full request that names a
        session id closes that session in the broker's cache (KIP-227; the broker's
        FetchManager removes it whether or not it opens a new one), so a session given up
        on is not left there until it expires."""
        self.epoch, self.offsets = _INITIAL_EPOCH, {}
        self.moved.clear()
        self.forgotten.clear()


class _Node:
    """The partitions read from one broker (their leader), its session and its task."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.partitions: set[TopicPartitionKey] = set()
        self.session = FetchSession()
        self.task: asyncio.Task[None] | None = None
        self.lost_in_a_row = 0
        """Session errors (70, 71) in a row: the second and later wait a back-off."""


Deliver = Callable[[str, int, list[TailRecord]], None]
"""Called with a topic, a partition and its records in offset order."""


def _error(code: int, what: str) -> KafkaError:
    """aiokafka's exception for a Kafka error code, with the code itself kept as `code`:
    aiokafka maps every code it does not know (74, 75, 78 among those retried here) to
    `UnknownError`, whose errno is -1, UNKNOWN_SERVER_ERROR's."""
    error = for_code(code)(f"{what} (error code {code})")
    error.code = code
    return error


def _retried(exc: KafkaError) -> bool:
    """Whether the feed retries after `exc` (with its positions kept) rather than fail: by
    its Kafka code where `_error` kept it (a code neither aiokafka nor `_RETRIED_CODES`
    knows fails the feed, as it did), else by aiokafka's exception."""
    code = getattr(exc, "code", getattr(exc, "errno", None))
    return bool(exc.retriable) or code in _RETRIED_CODES


class SessionFetcher:
    """Reads `positions` (topic, partition → next offset) forward from their leaders,
    handing records to `deliver` and moving the positions past them (the dict is the
    caller's too: it reads the positions, never writes them while this runs).

    Recovery, per partition as aiokafka's consumer did it: a partition that its broker
    answers with a retriable error (a routing error: the leader moved; a replica not
    available; a batch whose checksum is wrong; a failed ListOffsets after its position
    fell out of the log's range) leaves that broker's session (forgotten in the next
    request) and waits, alone, for a metadata update and a back-off; a broker that cannot
    be reached gives all its partitions back the same way. The others keep flowing. The
    back-off doubles with each failure in a row of a partition (`backoff_first` ..
    `backoff_max`, ±20 % jitter) and is forgotten once a fetch names it without error.
    What is not retriable (an old broker, an authorization error, …) ends `run` with
    that error, as the consumer's `getmany` raised it."""

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
        backoff_first: float = 0.1,
        backoff_max: float = 1.0,
        close_seconds: float = 2.0,
    ) -> None:
        self._client = client
        self.positions = positions
        self._deliver = deliver
        self._max_wait_ms = max_wait_ms
        self._min_bytes = min_bytes
        self._max_bytes = max_bytes
        self._partition_max_bytes = partition_max_bytes
        self._backoff_first = backoff_first
        self._backoff_max = backoff_max
        self._close_seconds = close_seconds
        self.requests = 0
        """Fetch requests sent (for tests and benches)."""
        self.sessions: dict[int, FetchSession] = {}
        """The fetch session with each broker (for tests)."""
        self.sessions_lost = 0
        """Sessions the broker no longer knew, or whose epoch it refused."""
        self.waiting: set[TopicPartitionKey] = set()
        """Partitions with no broker to read them from until the next metadata update."""
        self._failures: dict[TopicPartitionKey, int] = {}
        self._nodes: dict[int, _Node] = {}
        self._changed = asyncio.Event()
        self._failed: Exception | None = None

    async def run(self) -> None:
        """Fetch until cancelled (then close the sessions): one task per leader broker,
        each with its own session; this one places the partitions on their leaders and,
        while some wait, updates the metadata after a back-off. Raises what is not
        retriable."""
        if not self.positions:  # nothing to follow (a feed nobody follows a topic of)
            await asyncio.Event().wait()
        self.waiting = set(self.positions)
        try:
            self._place()
            while True:
                self._changed.clear()
                if self._failed is not None:
                    raise self._failed
                if not self.waiting:
                    await self._changed.wait()
                    continue
                # The freshest failure sets the pace (a partition given back a moment ago
                # is looked up soon, however long another has waited).
                failures = min(self._failures.get(key, 1) for key in self.waiting)
                await asyncio.sleep(self._backoff(failures))
                await self._client.force_metadata_update()
                self._place()
                for key in self.waiting:
                    self._failures[key] = self._failures.get(key, 0) + 1
        finally:
            await self._stop_nodes()

    def _backoff(self, failures: int) -> float:
        base: float = self._backoff_first * 2.0 ** min(max(failures, 1) - 1, 16)
        return min(self._backoff_max, base) * random.uniform(0.8, 1.2)

    def _place(self) -> None:
        """Waiting partitions whose leader is known join that broker's session."""
        for key in sorted(self.waiting):
            node_id = self._client.cluster.leader_for_partition(TopicPartition(*key))
            if node_id is None or node_id == -1:
                continue
            self.waiting.discard(key)
            node = self._nodes.get(node_id)
            if node is None:
                node = self._nodes[node_id] = _Node(node_id)
                self.sessions[node_id] = node.session
            node.partitions.add(key)
            node.session.forgotten.discard(key)
            node.session.moved.add(key)  # named (with its position) in the next request
            if node.task is None or node.task.done():
                node.task = asyncio.create_task(self._follow(node), name=f"fetch:{node_id}")

    def _give_back(self, node: _Node, key: TopicPartitionKey) -> None:
        """`key` leaves `node` (its session forgets it) and waits for a metadata update;
        its position stays."""
        node.partitions.discard(key)
        session = node.session
        session.moved.discard(key)
        if session.offsets.pop(key, None) is not None and session.epoch != _INITIAL_EPOCH:
            session.forgotten.add(key)
        self.waiting.add(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self._changed.set()

    def _give_back_all(self, node: _Node) -> None:
        node.session.reset()
        for key in sorted(node.partitions):
            self._give_back(node, key)

    async def _follow(self, node: _Node) -> None:
        try:
            while True:
                while node.partitions:
                    if not await self._fetch(node):
                        return
                # Every partition left this broker: close the session (placed
                # partitions may come back meanwhile; then the loop goes on).
                await self._close(node)
                if not node.partitions:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not retriable: `run` raises it
            self._failed = exc
            self._changed.set()

    async def _fetch(self, node: _Node) -> bool:
        """One request to `node` and its answer; False when `node` gave back its
        partitions (it could not be reached)."""
        session, positions = node.session, self.positions
        full = session.epoch == _INITIAL_EPOCH
        if full:
            named_keys = sorted(node.partitions)
            forgotten: list[TopicPartitionKey] = []
        else:
            named_keys = [key for key in session.moved if key in node.partitions]
            forgotten = sorted(session.forgotten)
        named = [(t, p, positions[t, p]) for t, p in named_keys]
        session.moved.clear()
        body = encode_fetch(
            max_wait_ms=self._max_wait_ms,
            min_bytes=self._min_bytes,
            max_bytes=self._max_bytes,
            session_id=session.session_id,
            epoch=session.epoch,
            partitions=named,
            partition_max_bytes=self._partition_max_bytes,
            forgotten=forgotten,
        )
        self.requests += 1
        try:
            answer: FetchAnswer = await self._client.send(node.node_id, SessionFetchRequest(body))
        except KafkaError as exc:
            if not _retried(exc):  # (an old broker, …): the feed fails, as it did
                raise
            # The broker may be gone, or no longer lead: its partitions wait for a
            # metadata update (back-off) and come back here or go to their new leader.
            log.warning("fetch from broker %s failed: %s", node.node_id, exc)
            self._give_back_all(node)
            return False
        if answer.error in _SESSION_ERRORS:
            log.info("fetch session with broker %s lost (error %d)", node.node_id, answer.error)
            self.sessions_lost += 1
            node.lost_in_a_row += 1
            session.reset()
            if node.lost_in_a_row > 1:
                await asyncio.sleep(self._backoff(node.lost_in_a_row - 1))
            return True
        if answer.error:
            error = _error(answer.error, f"fetch from broker {node.node_id}")
            if not _retried(error):
                raise error
            log.warning("fetch from broker %s failed: %s", node.node_id, error)
            self._give_back_all(node)
            return False
        node.lost_in_a_row = 0
        if full:
            # No id: the broker keeps no session for us (its cache is full); ask again.
            session.session_id = answer.session_id
            session.epoch = 1 if answer.session_id else _INITIAL_EPOCH
        else:
            session.epoch = session.epoch + 1 if session.epoch < 0x7FFFFFFF else 1
            session.forgotten.difference_update(forgotten)
        for topic, partition, offset in named:
            session.offsets[topic, partition] = offset
        failed = await self._take(node, answer)
        for key in named_keys:
            if key not in failed:
                self._failures.pop(key, None)
        return True

    async def _take(self, node: _Node, answer: FetchAnswer) -> set[TopicPartitionKey]:
        """Hand the answer's records over; the partitions given back (retriable errors)."""
        positions, session = self.positions, node.session
        failed: set[TopicPartitionKey] = set()
        handed = 0
        for data in answer.partitions:
            key = (data.topic, data.partition)
            position = positions.get(key)
            if position is None or key not in node.partitions:
                continue  # not ours (any more)
            if session.offsets.get(key) != position:
                continue  # answers an older position (never, but exact)
            if data.error == _OUT_OF_RANGE:
                try:
                    end = await self._end_offset(node.node_id, data.topic, data.partition)
                except KafkaError as exc:
                    if not _retried(exc):
                        raise
                    log.warning("%s/%d: its end offset: %s", *key, exc)
                    failed.add(key)
                    self._give_back(node, key)
                    continue
                log.warning(
                    "%s/%d: offset %d is out of the log's range; reading on from its end %d",
                    *key,
                    position,
                    end,
                )
                positions[key] = end
                session.moved.add(key)
                continue
            if data.error:
                error = _error(data.error, f"fetch of {data.topic}/{data.partition}")
                if not _retried(error):
                    raise error
                log.info("%s/%d: %s; looking up its leader", *key, error)
                failed.add(key)
                self._give_back(node, key)
                continue
            if data.records is None:
                continue
            try:
                records, after = read_records(data.topic, data.partition, position, data.records)
            except CorruptRecordException as exc:  # fetched again, after a back-off
                log.warning("%s", exc)
                failed.add(key)
                self._give_back(node, key)
                continue
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
        return failed

    async def _end_offset(self, node: int, topic: str, partition: int) -> int:
        return (await _ends_from(self._client, node, [(topic, partition)]))[topic, partition]

    async def _close(self, node: _Node) -> None:
        """Close `node`'s session: a full request with the final epoch (-1) names it and
        opens none (and names no partitions, so the broker answers at once)."""
        session = node.session
        if session.session_id:
            body = encode_fetch(
                max_wait_ms=0,
                min_bytes=self._min_bytes,
                max_bytes=self._max_bytes,
                session_id=session.session_id,
                epoch=_FINAL_EPOCH,
                partitions=(),
                partition_max_bytes=self._partition_max_bytes,
            )
            try:
                await self._client.send(node.node_id, SessionFetchRequest(body))
            except KafkaError as exc:  # the broker lets it expire
                log.info("closing the fetch session with broker %s: %s", node.node_id, exc)
        session.session_id = 0
        session.reset()

    async def _stop_nodes(self) -> None:
        """Stop every broker's task, then close the sessions (within `close_seconds`: a
        fetch in flight on the connection is answered first, in at most its wait)."""
        tasks = [node.task for node in self._nodes.values() if node.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        open_nodes = [node for node in self._nodes.values() if node.session.session_id]
        if not open_nodes:
            return
        try:
            async with asyncio.timeout(self._close_seconds):
                await asyncio.gather(*(self._close(node) for node in open_nodes))
        except TimeoutError:
            log.info("fetch sessions not closed within %.1f s", self._close_seconds)


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
