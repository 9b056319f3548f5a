"""Follows topics every API instance must read whole (outcomes, worker replies, events),
with one Kafka consumer for several of them.

All partitions from the end, no consumer group (each instance needs every record it may be
waiting for), each topic's records handed to the callback registered for that topic.

One consumer for outcomes and events rather than one per topic: the engine publishes a
batch's outcomes and events in one produce request, and each consumer answered it with a
fetch request of its own — the broker's CPU goes by requests far more than by records
(docs/write-path-cost.md). One fetch brings the outcomes and events of a batch together.
Worker replies are not in the engine's batches and have a feed of their own (app.py): a
fetch costs the API about 3 us of Python per partition it names (the request's and the
response's encoding), whether or not the partition has records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from pydantic import BaseModel, ValidationError

from services.common.kafka_io import tail_from_end
from services.common.settings import RunstoreSettings

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0

RecordsHandler = Callable[[int, Sequence[Any]], None]
"""Called with a partition and its records (aiokafka `ConsumerRecord`s) in offset order."""

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class _Follower:
    on_records: RecordsHandler
    on_failure: Callable[[str], None] | None


class TopicFeed:
    def __init__(self, settings: RunstoreSettings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._followers: dict[str, _Follower] = {}
        self._ends: dict[str, dict[int, int]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def follow(
        self,
        topic: str,
        on_records: RecordsHandler,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """Hand `topic`'s records to `on_records` once started (`on_failure` is told when
        the consumer fails; it retries). Before `start` only: the assignment is fixed then."""
        if self._consumer is not None:
            raise RuntimeError(f"TopicFeed.follow({topic!r}) after start()")
        self._followers[topic] = _Follower(on_records, on_failure)

    def ends(self, topic: str) -> dict[int, int]:
        """`topic`'s end offsets by partition when the feed started: every record from
        there on is delivered."""
        return dict(self._ends.get(topic, {}))

    async def start(self) -> None:
        """Returns once the ends are fixed: a record published after this is seen."""
        # aiokafka's default fetch wait (500 ms): the broker answers a fetch as soon as a
        # record arrives, so the wait only paces the empty fetches of an idle feed.
        consumer, self._ends = await tail_from_end(
            self._settings, list(self._followers), self._client_id
        )
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name=f"feed:{self._client_id}")

    async def stop(self) -> None:
        await stop_following(self._task, self._consumer)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker client failed: tell whoever waits
                log.exception("reading %s failed", ", ".join(self._followers))
                for follower in self._followers.values():
                    if follower.on_failure is not None:
                        follower.on_failure(f"live feed failed: {exc}")
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            for tp, records in batches.items():
                try:
                    self._followers[tp.topic].on_records(tp.partition, records)
                except Exception:
                    # A bug in one handler must not stop the others' records.
                    log.exception("handling records of %s failed", tp)


def resolve_waiters(
    records: Sequence[Any],
    model: type[M],
    id_of: Callable[[M], str],
    waiting: Mapping[str, asyncio.Future[M]],
) -> None:
    """Each record parsed as `model` resolves the waiter registered under its id (an
    unreadable record is logged and skipped; one nobody waits for is dropped)."""
    for record in records:
        if not record.value:
            continue
        try:
            found = model.model_validate_json(record.value)
        except ValidationError:
            log.warning("unreadable %s record ignored", model.__name__)
            continue
        waiter = waiting.get(id_of(found))
        if waiter is not None and not waiter.done():
            waiter.set_result(found)


async def stop_following(
    task: asyncio.Task[None] | None, consumer: AIOKafkaConsumer | None
) -> None:
    """Stop a task that follows a topic, then its consumer (either may not exist yet)."""
    if task is not None:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    if consumer is not None:
        await consumer.stop()
