"""Follows a topic every API instance must read whole (outcomes, worker replies).

All partitions from the end, no consumer group (each instance needs every record it may be
waiting for), each record handed to a callback that resolves the matching waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress

from aiokafka import AIOKafkaConsumer

from services.common.kafka_io import tail_from_end
from services.common.settings import RunstoreSettings


class TopicTail:
    def __init__(
        self,
        settings: RunstoreSettings,
        topic: str,
        client_id: str,
        handle: Callable[[bytes | None], None],
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._client_id = client_id
        self._handle = handle
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Returns once the end is fixed: a record published after this is seen."""
        consumer, _ = await tail_from_end(self._settings, self._topic, self._client_id)
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name=f"tail:{self._topic}")

    async def stop(self) -> None:
        await stop_following(self._task, self._consumer)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for records in batches.values():
                for record in records:
                    self._handle(record.value)


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
