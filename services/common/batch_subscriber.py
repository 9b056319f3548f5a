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
`fetch_max_wait_ms`: the projector's, the timers', an engine's set to gather) gathers only
while records come: after an idle `getmany` (no record for `IDLE_FETCH_WAIT_MS`) its fetches
ask for any record within `IDLE_BROKER_WAIT_MS`, as aiokafka's defaults do, and the first
batch that comes restores the consumer's own settings. Gathering while idle was a fetch
every 5 ms for nothing: ~35 ms/s of the engine's CPU and as much of the broker's, per engine.
The engine's subscriber stops gathering sooner, at its first empty fetch
(`pace_each_fetch`: `pace_by_response`), or, as an alternative, while its records come slower
than a rate (`gather_above_per_s`, the engine's `RUNSTORE_ENGINE_FETCH_GATHER_ABOVE_PER_S`,
off by default: half of it once gathering; fetches then ask for any record, held at most
`SLOW_BROKER_WAIT_MS`). The settings live on aiokafka's fetcher (`_fetch_min_bytes`,
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
import time
import weakref
from dataclasses import dataclass
from functools import cache
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

RATE_WINDOW_S = 1.0
"""How long a gathering consumer counts its records before it decides again whether to
gather (`gather_above_per_s`)."""


@dataclass(slots=True)
class _Pace:
    """A fetcher's own settings (noted at its first `getmany`) and its records' rate."""

    own: tuple[int, int]
    """Its own (`fetch_min_bytes`, `fetch_max_wait_ms`)."""
    since: float
    """When the current count began (monotonic seconds)."""
    records: int = 0
    gathering: bool = True
    """Whether the last complete window's rate called for gathering (or no rule)."""


SLOW_BROKER_WAIT_MS = 25
"""How long the broker holds a fetch of a busy consumer whose records come slower than its
`gather_above_per_s`: answered at the first record, as an idle one's, but held at most
this long. aiokafka keeps one fetch in flight per broker and leaves out of it the
partitions whose records wait in its buffer; once those are consumed they are fetched
only with the next request, after the one in flight returns. Held for the idle 500 ms,
that delayed commands on just-consumed partitions (docs/engine-performance.md, "Tenth
session")."""

_PACES: weakref.WeakKeyDictionary[object, _Pace] = weakref.WeakKeyDictionary()


def fetch_pace(
    consumer: object,
    busy: bool,
    records: int = 0,
    gather_above_per_s: float = 0.0,
    now: float | None = None,
) -> None:
    """Give `consumer`'s fetches its own gathering settings while records come (`busy`),
    or an idle consumer's (any record, within `IDLE_BROKER_WAIT_MS`). The change applies
    from the next fetch request.

    With `gather_above_per_s` > 0, a busy consumer gathers only while its records come at
    least that fast (`records` per `getmany`, counted over windows of `RATE_WINDOW_S`;
    once gathering, it stops below half that rate), and otherwise asks for any record,
    held at most `SLOW_BROKER_WAIT_MS`. Gathering pays when records come faster than one
    fetch's wait spreads them out: below that, a gathering fetch mostly expires with a few
    records or none (a request, its expiry in the broker's purgatory, and up to its wait added to
    every record's latency), where a fetch answered at the first record brings the same
    records at once. `now`: the monotonic clock (tests)."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not (
        hasattr(fetcher, "_fetch_min_bytes") and hasattr(fetcher, "_fetch_max_wait_ms")
    ):
        return
    clock = time.monotonic() if now is None else now
    pace = _PACES.get(fetcher)
    if pace is None:
        own = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
        # It starts gathering (as without a rule): a rate between half the rule and the
        # rule keeps whichever mode came first, and gathering is the safe side of it (a
        # closed loop of clients on a loaded box goes slower with fetches answered at
        # their first record: docs/engine-performance.md, "Tenth session").
        pace = _PACES[fetcher] = _Pace(own, clock)
    if pace.own[0] <= 1:
        return  # it never gathers: nothing to change
    if gather_above_per_s > 0:
        pace.records += records
        elapsed = clock - pace.since
        if elapsed >= RATE_WINDOW_S:
            rate = pace.records / elapsed
            pace.gathering = rate >= (
                gather_above_per_s / 2 if pace.gathering else gather_above_per_s
            )
            pace.since, pace.records = clock, 0
    if not busy:
        settings = (1, IDLE_BROKER_WAIT_MS)
    elif pace.gathering:
        settings = pace.own
    else:
        settings = (1, SLOW_BROKER_WAIT_MS)
    fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = settings


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

    Why (an engine set to gather, e.g. 64 KiB or 5 ms): in a closed loop of clients the
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
    _PACES.setdefault(fetcher, _Pace(own, time.monotonic()))  # for `fetch_pace`: idle wait
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
    gather_above_per_s: float = 0.0
    """`fetch_pace`'s rule (0: gather whenever records come); a class attribute, set by a
    subclass per value (`_with_rule`): FastStream's subscriber has slots, so the object
    itself takes no new attribute."""

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord[Any, Any], ...]:
        """The records one `getmany` returns (up to `max_records`), or none after an idle
        `batch_timeout_ms`: FastStream's consume loop then simply fetches again."""
        batches = await consumer.getmany(
            timeout_ms=self.batch_timeout_ms, max_records=self.max_records
        )
        records = tuple(chain.from_iterable(batches.values()))
        fetch_pace(consumer, bool(records), len(records), self.gather_above_per_s)
        return _without_null_headers(records)


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
        return _without_null_headers(tuple(chain.from_iterable(batches.values())))


def _without_null_headers(
    records: tuple[ConsumerRecord[Any, Any], ...],
) -> tuple[ConsumerRecord[Any, Any], ...]:
    """`records`, a null header value (Kafka allows one) read as empty. FastStream's batch
    parser decodes every header value of the batch; one None among them failed the whole
    batch before the handler saw it, and the next batch's offset commit then passed over
    it: every command fetched with such a record was lost."""
    for record in records:
        headers = record.headers
        if headers and any(value is None for _, value in headers):
            record.headers = [(key, b"" if value is None else value) for key, value in headers]
    return records


_UNPACEABLE: weakref.WeakSet[object] = weakref.WeakSet()
"""Consumers `pace_by_response` could not pace (warned about once)."""


@cache
def _with_rule(gather_above_per_s: float) -> type[WaitingBatchSubscriber]:
    if not gather_above_per_s:
        return WaitingBatchSubscriber
    return type(
        "WaitingBatchSubscriber",
        (WaitingBatchSubscriber,),
        {"__slots__": (), "gather_above_per_s": float(gather_above_per_s)},
    )


def batch_subscriber(
    broker: KafkaBroker,
    *topics: str,
    pace_each_fetch: bool = False,
    gather_above_per_s: float = 0.0,
    **options: Any,
) -> BatchSubscriber:
    """`broker.subscriber(*topics, batch=True, **options)` with `WaitingBatchSubscriber`'s
    fetch (its idle wait is `IDLE_FETCH_WAIT_MS`). Decorate the handler with the result.

    Two alternative rules for a gathering consumer (`fetch_min_bytes` > 1); with both set,
    `gather_above_per_s` is the one applied:
    - `pace_each_fetch`: it stops gathering at its first empty fetch (`pace_by_response`),
      not after an idle `getmany`. For a consumer whose gathering is only about batch size
      (the engine); not for one that gathers to keep related records in one batch (the
      projector's workflows), whose first batch after a pause would then be a single
      record's;
    - `gather_above_per_s`: it gathers only while its records come at least that fast
      (`fetch_pace`); 0: whenever records come."""
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
        _with_rule(gather_above_per_s)
        if gather_above_per_s or not pace_each_fetch
        else ResponsePacedBatchSubscriber
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
