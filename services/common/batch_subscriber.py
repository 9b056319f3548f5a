"""The batch subscriber every Kafka-consuming service declares (engine, projector, timers):
FastStream's, with a fetch that waits for records instead of sleeping after an empty one.

FastStream 0.7.8's `BatchSubscriber.get_msg` calls `consumer.getmany(timeout_ms=
batch_timeout_ms)` and, when that returns nothing, sleeps another `batch_timeout_ms` before
fetching again. A record arriving during that sleep waits for it: up to 50 ms on the start's
path (HTTP -> command -> engine -> outcome), and in a closed loop of clients the engine sees
an empty fetch between most waves. aiokafka's `getmany` already blocks on a future the
fetcher resolves as soon as records arrive, so here an empty fetch is simply followed by the
next: no sleep, and no spin either (each wait lasts up to `IDLE_FETCH_WAIT_MS` when idle, a
wake-up or two per second).

A subscriber whose consumer asks the broker to gather records (`fetch_min_bytes` > 1 with a
`fetch_max_wait_ms`: the engine's 64 KiB / 5 ms, the projector's, the timers') gathers only
while records come: after an idle `getmany` (no record for `IDLE_FETCH_WAIT_MS`) its fetches
ask for any record within `IDLE_BROKER_WAIT_MS`, as aiokafka's defaults do, and the first
batch that comes restores the consumer's own settings. Gathering while idle was a fetch
every 5 ms for nothing: ~35 ms/s of the engine's CPU and as much of the broker's, per engine.
The engine's subscriber (`pace_each_fetch`) stops gathering sooner, at its first empty
fetch (`pace_by_response`). The settings live on aiokafka's fetcher (`_fetch_min_bytes`,
`_fetch_max_wait_ms`, read for each fetch request it builds); `fetch_pace` checks they are
there, and does nothing if not.

FastStream has no option for this and builds its subscriber class inside `broker.subscriber`,
so `batch_subscriber` declares the subscriber the ordinary way and then gives it the subclass
below, which changes `get_msg` alone (the same slots: Python allows the class switch). It
checks the class it replaces, so a FastStream upgrade that changes it fails when the app is
built, not silently.
"""

from __future__ import annotations

import logging
import weakref
from itertools import chain
from typing import TYPE_CHECKING, Any, cast

from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord

log = logging.getLogger(__name__)

IDLE_FETCH_WAIT_MS = 1000
"""How long one `getmany` waits for records while none come. It ends as soon as one comes,
so this only paces an idle loop; stopping cancels the wait."""


IDLE_BROKER_WAIT_MS = 500
"""How long the broker holds a fetch of an idle consumer (aiokafka's default): it answers
as soon as one record comes (minimum bytes 1 while idle)."""

_OWN_SETTINGS: weakref.WeakKeyDictionary[object, tuple[int, int]] = weakref.WeakKeyDictionary()
"""A fetcher's own (`fetch_min_bytes`, `fetch_max_wait_ms`), noted at the first batch."""


def fetch_pace(consumer: object, busy: bool) -> None:
    """Give `consumer`'s fetches its own gathering settings while records come (`busy`),
    or an idle consumer's (any record, within `IDLE_BROKER_WAIT_MS`). The change applies
    from the next fetch request."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not (
        hasattr(fetcher, "_fetch_min_bytes") and hasattr(fetcher, "_fetch_max_wait_ms")
    ):
        return
    own = _OWN_SETTINGS.get(fetcher)
    if own is None:
        own = _OWN_SETTINGS[fetcher] = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
    if own[0] <= 1:
        return  # it never gathers: nothing to change
    fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = own if busy else (1, IDLE_BROKER_WAIT_MS)


BETWEEN_WAVES_WAIT_MS = 100
"""How long the broker holds an engine's fetch after an empty one (`pace_by_response`), until
a whole idle `getmany` lengthens it to `IDLE_BROKER_WAIT_MS`. Answered by the next record, so
waves of commands tens of milliseconds apart are not delayed by it; but aiokafka sends a
broker nothing else while a fetch to it is held, so a partition sought back, resumed, or moved
to that broker meanwhile waits for it: this bounds that wait in a busy engine."""


def pace_by_response(consumer: object) -> bool:
    """From now on, let each of `consumer`'s fetch responses set the next request's pace:
    after one that brought records, its own gathering settings; after an empty one, any
    record within `BETWEEN_WAVES_WAIT_MS` (a fetch already asking for any record keeps its
    wait), unless records fetched before still wait to be consumed (see `paced`).
    Idempotent. False if `consumer` has no aiokafka fetcher as this knows it (the caller
    then paces by `getmany`s: `fetch_pace`); true otherwise, also for one that never
    gathers (nothing to change).

    Why (the engine): its fetch gathers 64 KiB or 5 ms, and in a closed loop of clients the
    commands come in waves, one produce request each, with tens of milliseconds between
    them. `fetch_pace` turns gathering off only after a whole idle `getmany`, so between two
    waves the fetcher sent a fetch every 5 ms that the broker held and expired empty (the
    ninth session's census: 0.284 engine fetches per start at 213 starts/s with 32 clients,
    ~9 per wave of 32). On the tenth session's box an expiring fetch cost the broker ~2x
    and the consumer ~1.5x one answered at once, about 2 ms of CPU in all
    (`bench/fetch_wait_cost.py`; docs/write-path-cost.md, "Tenth session"). Now the first
    empty fetch asks for any record; the broker answers it when the next wave's produce
    request has been appended (with one replica, after all of its partitions: the wave
    comes whole), and the fetch after it gathers again. A backlog, or a stream faster
    than one record per fetch wait, keeps it gathering.

    The fetcher builds each request from `_fetch_min_bytes` / `_fetch_max_wait_ms` and
    processes each response in `_proc_fetch_request` (true when it buffered records or
    an error for the caller); the wrapper is set on the instance and calls the original."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        return False
    if fetcher in _PACED:
        return True
    process = getattr(fetcher, "_proc_fetch_request", None)
    if process is None or not (
        hasattr(fetcher, "_fetch_min_bytes")
        and hasattr(fetcher, "_fetch_max_wait_ms")
        and hasattr(fetcher, "_records")
    ):
        return False
    _PACED.add(fetcher)
    own = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
    _OWN_SETTINGS.setdefault(fetcher, own)  # for `fetch_pace`, which sets the idle wait
    if own[0] <= 1:
        return True  # it never gathers: nothing to change

    async def paced(*args: Any, **kwargs: Any) -> Any:
        brought = await process(*args, **kwargs)
        # While records of some partition wait to be consumed, the fetcher leaves that
        # partition out of its requests, and sends nothing else to the node while one is in
        # flight: an "any record" fetch for the others could then keep a hot partition's
        # backlog waiting. Only a fetcher with nothing buffered stops gathering.
        if brought or fetcher._records:
            fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = own
        elif fetcher._fetch_min_bytes != 1:
            fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = 1, BETWEEN_WAVES_WAIT_MS
        return brought

    fetcher._proc_fetch_request = paced
    return True


_PACED: weakref.WeakSet[object] = weakref.WeakSet()
"""Fetchers `pace_by_response` already paces."""


class WaitingBatchSubscriber(BatchSubscriber):
    """FastStream's batch subscriber whose fetch waits for records without the sleep."""

    __slots__ = ()

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord[Any, Any], ...]:
        """The records one `getmany` returns (up to `max_records`), or none after an idle
        `batch_timeout_ms`: FastStream's consume loop then simply fetches again."""
        batches = await consumer.getmany(
            timeout_ms=self.batch_timeout_ms, max_records=self.max_records
        )
        fetch_pace(consumer, busy=bool(batches))
        return tuple(chain.from_iterable(batches.values()))


class ResponsePacedBatchSubscriber(WaitingBatchSubscriber):
    """`WaitingBatchSubscriber` whose consumer's fetches are paced response by response
    (`pace_by_response`) instead of by idle `getmany`s."""

    __slots__ = ()

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord[Any, Any], ...]:
        paced = pace_by_response(consumer)
        if not paced and consumer not in _UNPACEABLE:
            _UNPACEABLE.add(consumer)
            log.warning(
                "aiokafka's fetcher is not as pace_by_response knows it: this consumer's "
                "fetches are paced by idle getmany calls instead (batch_subscriber.fetch_pace)"
            )
        batches = await consumer.getmany(
            timeout_ms=self.batch_timeout_ms, max_records=self.max_records
        )
        if not paced or not batches:
            # A whole idle getmany: the broker may hold the next fetch its idle wait.
            fetch_pace(consumer, busy=bool(batches))
        return tuple(chain.from_iterable(batches.values()))


_UNPACEABLE: weakref.WeakSet[object] = weakref.WeakSet()
"""Consumers `pace_by_response` could not pace (warned about once)."""


def batch_subscriber(
    broker: KafkaBroker, *topics: str, pace_each_fetch: bool = False, **options: Any
) -> BatchSubscriber:
    """`broker.subscriber(*topics, batch=True, **options)` with `WaitingBatchSubscriber`'s
    fetch (its idle wait is `IDLE_FETCH_WAIT_MS`). Decorate the handler with the result.

    `pace_each_fetch`: a gathering consumer stops gathering at its first empty fetch
    (`pace_by_response`), not after an idle `getmany`. For a consumer whose gathering is
    only about batch size (the engine); not for one that gathers to keep related records
    in one batch (the projector's workflows), whose first batch after a pause would then
    be a single record's."""
    if "batch_timeout_ms" in options:
        raise TypeError("batch_subscriber sets batch_timeout_ms itself (IDLE_FETCH_WAIT_MS)")
    subscriber = broker.subscriber(
        *topics, batch=True, batch_timeout_ms=IDLE_FETCH_WAIT_MS, **options
    )
    if type(subscriber) is not BatchSubscriber:
        raise TypeError(
            f"FastStream built a {type(subscriber).__name__}, not the BatchSubscriber "
            "whose fetch WaitingBatchSubscriber replaces"
        )
    subscriber.__class__ = (
        ResponsePacedBatchSubscriber if pace_each_fetch else WaitingBatchSubscriber
    )
    return subscriber


async def message_as_body(message: KafkaMessage) -> KafkaMessage:
    """A batch subscriber's decoder that hands the handler FastStream's message itself as
    its body: declare the handler `async def handle(message: Any)` and read the records
    with `kafka_io.batch_records(message)` (nothing is decoded per record, as with
    `stream_service.raw_records`).

    Why not a parameter annotated `faststream.kafka.annotations.KafkaMessage`: that is a
    FastStream `Context`, whose `use` is a plain function, and fast_depends runs a plain
    function in a worker thread (anyio's `to_thread`): one hop to a thread and back per
    batch, ~3 % of the timers' and of the engine's CPU in a py-spy profile under
    bench/workers.py. A coroutine decoder runs on the loop, and the body needs no
    resolving. `test_a_batch_handler_gets_its_message_without_a_thread`
    (tests/integration/test_batch_subscriber.py) checks it.

    A weak proxy, not the message: FastStream keeps the decoded body on the message, and
    the message itself as its own body would make every batch (its records, FastStream's
    lists and header dicts) a reference cycle, freed only by the cyclic collector, not
    when the handler returns. FastStream holds the message while the handler runs."""
    return cast(KafkaMessage, weakref.proxy(message))
