"""The event store's appends on an event loop of their own, in a thread.

The engine's loop runs CPU-bound stretches of tens of ms (deciding a batch, building the
records of another): while the store's inserts wait for that loop, each of a batch's
sequential insert requests starts late, and the database idles in between. Appends run
on a second loop (its own `AsyncMongoClient`: a client belongs to one loop), so the next
request goes out as soon as the previous one is answered; reads stay on the main loop.

Small rounds (a few commands per batch, as a worker's workflows make them at moderate
rates) are appended on the main loop instead: the loop is not busy then, and the hop to
the writer's thread and back (cross-thread wake-ups and GIL hand-overs) cost the engine
~240 µs of CPU per round (docs/engine-performance.md, "Fewer requests per batch").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Collection, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from schemas.commits import Commit
from services.common.metrics import STORE_LATENCY
from services.engine.event_store import AppendReport, EventStore, EventStoreAdapter, RoundReport

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the thread's loop; await its result from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


_STORE_LATENCY = STORE_LATENCY.labels("engine")

INLINE_ROUND_MAX = 32
"""Rounds of at most this many commits are appended on the caller's loop."""


class OffLoopAppends:
    """An EventStore whose appends (`append`, `append_first`, `append_round`) run on
    `writer`'s loop through `writes` (a store built on that loop's client); everything
    else through `reads`, and so do rounds of at most `inline_max` commits. Appends never
    overlap (the engine stores one round at a time), so the two clients' writes keep
    their order."""

    def __init__(
        self,
        reads: EventStore,
        writes: EventStoreAdapter,
        writer: LoopThread,
        inline_max: int = INLINE_ROUND_MAX,
    ) -> None:
        self._reads = reads
        self._writes = writes
        self._writer = writer
        self._inline_max = inline_max

    async def setup(self) -> None:
        await self._reads.setup()
        await self._writer.run(self._writes.setup())

    async def append(self, commits: Sequence[Commit]) -> AppendReport:
        with _STORE_LATENCY.time():
            return await self._writer.run(self._writes.append(commits))

    async def append_first(self, commits: Sequence[Commit]) -> set[int]:
        return await self._writer.run(self._writes.append_first(commits))

    async def append_round(self, firsts: Sequence[Commit], rest: Sequence[Commit]) -> RoundReport:
        # On the writer's loop: a request that follows another (after a refusal) goes out
        # as soon as the first is answered, not when the engine's loop next gets to it.
        with _STORE_LATENCY.time():
            if len(firsts) + len(rest) <= self._inline_max:
                return await self._reads.append_round(firsts, rest)
            return await self._writer.run(self._writes.append_round(firsts, rest))

    async def latest(self, execution_ids: Collection[str]) -> dict[str, Commit]:
        return await self._reads.latest(execution_ids)

    async def get(self, execution_id: str, seq: int) -> Commit | None:
        return await self._reads.get(execution_id, seq)

    async def find_by_command(self, command_id: str) -> Commit | None:
        return await self._reads.find_by_command(command_id)

    async def find_by_commands(
        self, command_ids: Collection[str], streams: Mapping[str, int] | None = None
    ) -> dict[str, Commit]:
        return await self._reads.find_by_commands(command_ids, streams)

    def read_stream(self, execution_id: str, after_seq: int = 0) -> AsyncIterator[Commit]:
        return self._reads.read_stream(execution_id, after_seq)
