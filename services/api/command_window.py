"""The API's records to Kafka (commands, and the query and update tasks of workers) go out
in windows: the records published within `RUNSTORE_API_PUBLISH_LINGER_MS` of a window's
first record are handed to the producer together, as one ready-built batch per partition,
so a window costs one produce request. One window is in flight at a time: records that
come while it is go in the next, which so grows with the load (as aiokafka's batches grow
while its sender waits for the broker).

Why not aiokafka's own linger: it counts from each partition's first record, and its
sender takes only the batches whose linger has run out, so with records spread over a
topic's partitions the batches come due one by one and go out in a request each (a
produce request costs the broker about 0.5 ms of CPU, and the API more Python than a few
records). And a record sent through `AIOKafkaProducer.send` costs the API 20-50 us of
Python (partitioner, accumulator, a future per record) that a record appended to a batch
directly does not.

With `quiet_ms`, a window also ends once no record came for a while (the linger then
only bounds it): a burst of concurrent requests (a closed loop of clients answered
together) goes out as soon as it is over instead of waiting out the linger. "A while" is
`quiet_ms`, or `_GAP_FACTOR` times the usual gap between records when that is longer, so
records that keep coming at a steady pace (one every 2 ms at 500/s) still share windows up
to the linger instead of each ending its own. Measured on the start's path
(docs/write-path-cost.md, 2026-12-06): the linger was 10 of its ~40 ms.

Each record's caller learns its own partition's fate: acknowledged, or its batch's error.
Records with one key keep their order (one partition, appended in order, one window after
the other).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Literal, get_args

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder

from services.common.kafka_io import Outgoing, append_record, murmur2, started_producer
from services.common.metrics import API_COMMAND_WINDOWS
from services.common.settings import RunstoreSettings

log = logging.getLogger(__name__)

_Pending = tuple[Outgoing, asyncio.Future[None]]

_Ended = Literal["all_waiting", "quiet", "linger", "stop"]
_ENDED = {ended: API_COMMAND_WINDOWS.labels(ended) for ended in get_args(_Ended)}

_TIMER_SLACK = 0.0002
"""A window due within this many seconds is over now (asyncio's timers fire a little early
or late; re-arming for less is a wasted loop pass)."""
_GAP_FACTOR = 4.0
"""A window ends after this many usual gaps between records without one (or `quiet_ms`)."""
_GAP_WEIGHT = 0.2
"""Weight of each new gap in the usual gap (an exponential moving average): a burst's
dozens of short gaps outweigh the one long gap before it within the burst."""


class WindowedPublisher:
    def __init__(
        self,
        settings: RunstoreSettings,
        client_id: str,
        window_ms: int,
        quiet_ms: int | None = None,
        placed: Callable[[], None] | None = None,
    ) -> None:
        """`window_ms`: the longest a record waits for others; `quiet_ms` (None, or at
        least `window_ms`: off): a window ends sooner, once no record came for this long.
        `placed`: called once a call's records are in the window (`ConnectionCensus.place`,
        which calls `nothing_can_come` when no other record can come)."""
        self._settings = settings
        self._client_id = client_id
        self._window = window_ms / 1000
        self._quiet = quiet_ms / 1000 if quiet_ms is not None and quiet_ms < window_ms else None
        self._placed = placed
        self._opened = 0.0
        """When the pending records' window opened (loop time)."""
        self._last = 0.0
        """When the latest record came (loop time)."""
        self._gap = (self._quiet or 0.0) / _GAP_FACTOR
        """The usual gap between records (seconds; a moving average of gaps, each counted
        up to a `_GAP_FACTOR`th of the linger): learnt upwards from `quiet_ms`."""
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[_Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._due = False
        """The pending records' window is over (they go as soon as none is in flight)."""
        self._in_flight: asyncio.Task[None] | None = None
        """The window handed to the producer and not yet acknowledged: one at a time, so
        windows reach the broker in order and records that come meanwhile join the next
        window's batches (as aiokafka's own batches grow while its sender is busy)."""
        self._partitions: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of `start` (`asyncio.get_running_loop()` is a `getpid` system call on
        Python 3.11: not once per publish)."""

    async def start(self) -> None:
        # Idempotent (so acks=all), as every Runstore producer: a retried produce never
        # duplicates or reorders records of a partition, which per-execution order relies
        # on. linger 0: the window is the linger (records wait for it, not for aiokafka's).
        self._producer = await started_producer(self._settings, self._client_id, linger_ms=0)
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()

    async def stop(self) -> None:
        """Sends what is waiting for its window, then stops the producer."""
        while True:
            self._window_over("stop")  # the pending go now, or right after the one in flight
            in_flight = self._in_flight
            if in_flight is None:  # nothing pending, nothing in flight
                break
            await asyncio.wait([in_flight])
            await asyncio.sleep(0)  # its done-callback hands the next window over
        if self._producer is not None:
            await self._producer.stop()

    async def publish(
        self, records: Sequence[Outgoing], within_seconds: float | None = None
    ) -> None:
        """Publish `records` with the window they fall in; returns once each is
        acknowledged, raises the error of the first that is not (KafkaError). Cancelled
        before its window goes out, a record is not sent.

        `within_seconds`: TimeoutError for a record not acknowledged by then, and a
        record whose window has not gone out by then is not sent (as if cancelled). One
        timer per call rather than an `asyncio.timeout` around it: the API's hottest path
        (each start) waits here."""
        if self._producer is None:
            raise RuntimeError("WindowedPublisher.start() was not called")
        loop = self._loop
        if loop is None:  # (a producer given without `start`: the benches' fakes)
            loop = self._loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[None]] = []
        for record in records:
            waits.append(loop.create_future())
            self._pending.append((record, waits[-1]))
        now = loop.time()
        if self._quiet is not None:
            # A gap counts up to the linger's share (longer ones would only make the
            # quiet time the linger; after an idle spell one costs a lone record a little).
            gap = min(now - self._last, self._window / _GAP_FACTOR)
            self._gap += (gap - self._gap) * _GAP_WEIGHT
        self._last = now
        if self._placed is not None:
            self._placed()  # (which ends the window now if no other record can come)
        if self._timer is None and not self._due and self._pending:
            self._opened = now
            if self._quiet is None:
                self._timer = loop.call_later(self._window, self._window_over, "linger")
            else:
                # First look after the shortest quiet time: the records that follow at
                # once (a burst) shorten the usual gap the window then waits for.
                self._timer = loop.call_later(self._quiet, self._quiet_check)
        expiry = (
            None if within_seconds is None else loop.call_later(within_seconds, _time_out, waits)
        )
        try:
            if len(waits) == 1:
                await waits[0]
                return
            for result in await asyncio.gather(*waits, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        finally:
            if expiry is not None:
                expiry.cancel()

    def nothing_can_come(self) -> None:
        """No other record can come now (every HTTP connection's request waits for an
        answer): the pending records go at once, as waiting would only delay them."""
        if self._pending and not self._due:
            self._window_over("all_waiting")

    def _quiet_time(self) -> float:
        """How long without a record ends a window: `quiet_ms`, or a few usual gaps."""
        assert self._quiet is not None
        return max(self._quiet, _GAP_FACTOR * self._gap)

    def _quiet_check(self) -> None:
        """The window ends if no record came for the quiet time or its linger is over;
        else look again when one of those is due. (One timer a window, re-armed only while
        records keep coming, rather than one per record.)"""
        loop = self._loop
        assert loop is not None  # (a timer of `publish`, after `start`)
        quiet_at, linger_at = self._last + self._quiet_time(), self._opened + self._window
        due = min(quiet_at, linger_at)
        if due - loop.time() > _TIMER_SLACK:
            self._timer = loop.call_at(due, self._quiet_check)
            return
        self._timer = None
        self._window_over("quiet" if quiet_at < linger_at else "linger")

    def _window_over(self, ended: _Ended) -> None:
        """The pending records' window is over (`ended`: why, for the metric)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._due and self._pending:
            _ENDED[ended].inc()
        self._due = True
        if self._in_flight is None:
            self._flush()

    def _flush(self) -> None:
        window, self._pending = self._pending, []
        self._due = False
        if not window:
            return
        self._in_flight = asyncio.create_task(self._send(window))
        self._in_flight.add_done_callback(self._sent)

    def _sent(self, _task: asyncio.Task[None]) -> None:
        self._in_flight = None
        if self._due:
            self._flush()

    async def _send(self, window: list[_Pending]) -> None:
        """Hand every partition's batches of `window` to the producer (the sender then
        takes them together into one request) and wait for their acknowledgements.

        A partition whose records fit one batch (nearly always) is handed over here, in
        one pass over the partitions, and its callers are settled by a callback on its
        acknowledgement: no task and no `asyncio.wait` per partition (a window of a
        closed loop's wave spans most of the topic's partitions, and those cost more
        Python than the batches themselves). A partition with several batches goes
        batch by batch (`_hand_over`), each after the one before it is acknowledged."""
        producer = self._producer
        assert producer is not None
        by_partition: dict[tuple[str, int], list[_Pending]] = {}
        # A topic whose partition count could not be learnt in this window: its other
        # records fail at once instead of each waiting for the metadata in turn.
        unknown: dict[str, Exception] = {}
        for record, done in window:
            if done.done():  # its request gave up (cancelled) before the window went
                continue
            try:
                count = self._partitions.get(record.topic)
                if count is None:
                    if record.topic in unknown:
                        raise unknown[record.topic]
                    try:
                        count = await self._partition_count(record.topic)
                    except Exception as exc:  # no metadata for the topic
                        unknown[record.topic] = exc
                        raise
                partition = (murmur2(record.key.encode()) & 0x7FFFFFFF) % count
            except Exception as exc:  # its caller is told (unless it gave up meanwhile)
                if not done.done():
                    done.set_exception(exc)
                continue
            items = by_partition.get((record.topic, partition))
            if items is None:
                by_partition[(record.topic, partition)] = [(record, done)]
            else:
                items.append((record, done))
        acks: list[asyncio.Future[object]] = []
        chains: list[Coroutine[object, object, None]] = []
        for (topic, partition), items in by_partition.items():
            dones_of: list[list[asyncio.Future[None]]] = []
            try:
                builders: list[BatchBuilder] = []
                for record, done in items:
                    if append_record(producer, builders, record):
                        dones_of.append([])
                    dones_of[-1].append(done)
                if len(builders) > 1:
                    chains.append(self._hand_over(topic, partition, builders, dones_of))
                    continue
                builders[0].close()
                ack = await producer.send_batch(builders[0], topic, partition=partition)
            except Exception as exc:  # not handed over (or a bug): its records are told
                if not isinstance(exc, KafkaError):
                    log.error("publishing a window's partition failed: %r", exc)
                _settle_all([done for _, done in items], exc)
                continue
            ack.add_done_callback(partial(_settled, dones_of[0]))
            acks.append(ack)
        failure: Exception | None = None
        if chains:
            for result in await asyncio.gather(*chains, return_exceptions=True):
                if isinstance(result, Exception):
                    failure = result
        if acks:
            await asyncio.wait(acks)  # (their callbacks settle their callers first)
        if failure is not None:  # a bug: the records' callers are told
            log.error("publishing a window failed: %r", failure)
            _settle_all([done for _, done in window], failure)

    async def _partition_count(self, topic: str) -> int:
        """How many partitions `topic` has (the producer's metadata; kept, as Kafka only
        ever adds partitions and the default partitioner's choice must not move)."""
        assert self._producer is not None
        count = len(await self._producer.partitions_for(topic))
        self._partitions[topic] = count
        return count

    async def _hand_over(
        self,
        topic: str,
        partition: int,
        builders: list[BatchBuilder],
        dones_of: list[list[asyncio.Future[None]]],
    ) -> None:
        """Hand one partition's batches to the producer one after the other, each once the
        one before it is acknowledged, and settle each batch's futures by its
        acknowledgement."""
        producer = self._producer
        assert producer is not None
        chain = list(zip(builders, dones_of, strict=True))
        for n, (builder, dones) in enumerate(chain):
            builder.close()
            try:
                ack = await producer.send_batch(builder, topic, partition=partition)
                await asyncio.wait([ack])
            except Exception as exc:
                # Not handed over: neither is anything after it (the order must hold).
                for _, later in chain[n:]:
                    for done in later:
                        if not done.done():
                            done.set_exception(exc)
                return
            failed = _settle(ack, dones)
            if failed is not None:
                # Refused by the broker: what comes after it in this partition must not
                # land before it (a caller's retry would then reorder a key's records).
                for _, later in chain[n + 1 :]:
                    for done in later:
                        if not done.done():
                            done.set_exception(failed)
                return


def _time_out(waits: list[asyncio.Future[None]]) -> None:
    """A publish's time is up: its records not yet acknowledged fail with TimeoutError
    (one whose window has not gone out is then skipped, as a cancelled one is)."""
    for wait in waits:
        if not wait.done():
            wait.set_exception(TimeoutError())


def _settle_all(dones: list[asyncio.Future[None]], error: BaseException) -> None:
    for done in dones:
        if not done.done():
            done.set_exception(error)


def _settled(dones: list[asyncio.Future[None]], ack: asyncio.Future[object]) -> None:
    """`ack`'s done-callback: its batch's callers learn its fate."""
    _settle(ack, dones)


def _settle(ack: asyncio.Future[object], dones: list[asyncio.Future[None]]) -> BaseException | None:
    """Settle `dones` by their batch's acknowledgement; what it failed with, if it did."""
    error = None if ack.cancelled() else ack.exception()
    for done in dones:
        if done.done():
            continue
        if ack.cancelled():
            done.cancel()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(None)
    return asyncio.CancelledError() if ack.cancelled() else error
