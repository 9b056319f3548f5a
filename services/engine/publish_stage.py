"""The ordered publish stage: at most one batch is published at a time, so the records
of one key keep their order across batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _InFlight:
    task: asyncio.Task[None]
    start: dict[TopicPartition, int]


class PublishStage:
    def __init__(self) -> None:
        self._in_flight: _InFlight | None = None

    def start(self, start: dict[TopicPartition, int], publish: Coroutine[Any, Any, None]) -> None:
        """Run `publish` (a batch's records, then its offset commit) in the background.
        `start`: where to seek back to if it fails. Call only once the previous batch's
        result was taken (`result`)."""
        if self._in_flight is not None:
            raise RuntimeError("a batch is still being published; take its result first")
        self._in_flight = _InFlight(asyncio.create_task(publish), start)

    @property
    def in_flight(self) -> asyncio.Task[None] | None:
        """The publish whose result was not taken yet (running or finished), if any."""
        return self._in_flight.task if self._in_flight is not None else None

    def known_failed(self) -> bool:
        """The batch being published has failed already (its result not taken yet).
        A publish still in flight is not known to fail: the next store need not wait
        for its acknowledgements (services/engine/pipeline.py)."""
        in_flight = self._in_flight
        if in_flight is None or not in_flight.task.done():
            return False
        task = in_flight.task
        return task.cancelled() or task.exception() is not None

    async def result(self) -> dict[TopicPartition, int]:
        """Wait for the batch being published and take its result: where to seek back to
        if it failed (empty when it succeeded or nothing was in flight)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return {}
        try:
            await in_flight.task
        except Exception:
            log.exception("publishing a batch failed; it will be consumed again")
            return in_flight.start
        return {}

    async def wait(self) -> None:
        """Wait until nothing is being published, leaving the result to `result`."""
        if self._in_flight is not None:
            await asyncio.wait({self._in_flight.task})
