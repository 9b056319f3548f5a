"""Follows topics every API instance must read whole (outcomes, worker replies, events),
with one Kafka consumer for several of them.

All partitions from the end, no consumer group (each instance needs every record it may be
waiting for), each topic's records handed to the callback registered for that topic.

One consumer for outcomes and events rather than one per topic: the engine publishes a
batch's outcomes and events in one produce request, and each consumer answered it with a
fetch request of its own — the broker's CPU goes by requests far more than by records
(docs/write-path-cost.md). One fetch brings the outcomes and events of a batch together.
Worker replies are not in the engine's batches and have a feed of their own (app.py).

The fetches are not aiokafka's consumer's: they go in an incremental fetch session
(session_fetch.py), so a request names, and a response holds, only the partitions with
records instead of every partition of every topic followed (aiokafka's consumer cost
~3 us of Python per partition named, per fetch). aiokafka's client still does the
connections and the metadata.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaClient, AIOKafkaConsumer
from pydantic import BaseModel, ValidationError

from services.api.session_fetch import SessionFetcher, TailRecord, ends_when_led
from services.common.kafka_topics import partitions_of
from services.common.settings import RunstoreSettings

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0

RecordsHandler = Callable[[int, Sequence[Any]], None]
"""Called with a partition and its records (`session_fetch.TailRecord`s, with the
attributes of aiokafka's `ConsumerRecord` that handlers read) in offset order."""

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
        self._positions: dict[tuple[str, int], int] = {}
        self._client: AIOKafkaClient | None = None
        self._fetcher: SessionFetcher | None = None
        self._requests = 0
        self._task: asyncio.Task[None] | None = None

    def follow(
        self,
        topic: str,
        on_records: RecordsHandler,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """Hand `topic`'s records to `on_records` once started (`on_failure` is told when
        the consumer fails; it retries). Before `start` only: the assignment is fixed then."""
        if self._client is not None:
            raise RuntimeError(f"TopicFeed.follow({topic!r}) after start()")
        self._followers[topic] = _Follower(on_records, on_failure)

    def ends(self, topic: str) -> dict[int, int]:
        """`topic`'s end offsets by partition when the feed started: every record from
        there on is delivered."""
        return dict(self._ends.get(topic, {}))

    async def start(self) -> None:
        """Returns once the ends are fixed: a record published after this is seen."""
        client = AIOKafkaClient(
            bootstrap_servers=self._settings.kafka_bootstrap, client_id=self._client_id
        )
        await client.bootstrap()
        try:
            topics = list(self._followers)
            await client.set_topics(topics)
            keys = [
                (topic, p) for topic in topics for p in await partitions_of(self._settings, topic)
            ]
            self._positions = await ends_when_led(client, keys)
        except BaseException:
            await client.close()
            raise
        self._client = client
        for (topic, partition), end in self._positions.items():
            self._ends.setdefault(topic, {})[partition] = end
        self._task = asyncio.create_task(self._follow(client), name=f"feed:{self._client_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()
        self._task, self._client = None, None

    @property
    def fetch_requests(self) -> int:
        """Fetch requests sent so far (for tests and benches)."""
        return self._requests + (self._fetcher.requests if self._fetcher is not None else 0)

    async def _follow(self, client: AIOKafkaClient) -> None:
        # aiokafka's default fetch wait (500 ms): the broker answers a fetch as soon as a
        # record arrives, so the wait only paces the empty fetches of an idle feed.
        while True:
            self._fetcher = SessionFetcher(client, self._positions, self._deliver)
            try:
                await self._fetcher.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker client failed: tell whoever waits
                log.exception("reading %s failed", ", ".join(self._followers))
                for follower in self._followers.values():
                    if follower.on_failure is not None:
                        follower.on_failure(f"live feed failed: {exc}")
                await asyncio.sleep(_RETRY_SECONDS)
            finally:
                self._requests += self._fetcher.requests
                self._fetcher = None

    def _deliver(self, topic: str, partition: int, records: list[TailRecord]) -> None:
        try:
            self._followers[topic].on_records(partition, records)
        except Exception:
            # A bug in one handler must not stop the others' records.
            log.exception("handling records of %s/%d failed", topic, partition)


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
