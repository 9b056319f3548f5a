"""An execution's LIVE stream starts after what is stored when it opens, even when a stored
commit's events reach the topic after the subscription (the engine answers a command once
it is stored and publishes its events after that): a client that signalled, then opened a
LIVE stream, must not get that signal back as "what comes next". In memory, with the
fanout scripted; the same through the SDK is tests/sdk/test_streams.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from services.api.event_fanout import Delivery
from services.api.execution_stream import ExecutionStream
from services.api.public_events import Position
from services.api.sse import KEEPALIVE
from services.common.memory_commit_log import MemoryCommitLog
from tests.support.commits import make_commit


class _Subscription:
    def __init__(self, deliveries: list[Delivery], before_first: Callable[[], None]) -> None:
        self.deliveries = deliveries
        self.before_first: Callable[[], None] | None = before_first

    async def next(self, wait_seconds: float) -> Delivery | None:
        if self.before_first is not None:
            self.before_first, hook = None, self.before_first
            hook()
        if self.deliveries:
            return self.deliveries.pop(0)
        await asyncio.sleep(wait_seconds)
        return None


class _Fanout:
    """Hands each subscriber the deliveries scripted when it subscribes."""

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries
        self.before_first_delivery: Callable[[], None] = lambda: None

    def subscribe(self, execution_id: str) -> _Subscription:
        return _Subscription(list(self.deliveries), self.before_first_delivery)

    def unsubscribe(self, sub: _Subscription) -> None:
        return None


def _stream(fanout: _Fanout, commits: MemoryCommitLog, **options: Any) -> ExecutionStream:
    return ExecutionStream(
        "e1",
        fanout,  # type: ignore[arg-type]
        commits,
        keepalive_seconds=0.01,
        end_when_closed=False,
        **options,
    )


async def _first_events(stream: ExecutionStream, count: int) -> list[int]:
    """The broker sequences of the first `count` event frames (keepalives skipped)."""
    seen: list[int] = []
    frames = stream.frames()
    async with asyncio.timeout(5):
        async for chunk in frames:
            if chunk != KEEPALIVE:
                seen.append(int(chunk.split(b"\n", 1)[0].removeprefix(b"id: ")))
                if len(seen) == count:
                    break
    await frames.aclose()
    return seen


async def test_live_skips_a_stored_event_published_after_it_subscribed() -> None:
    stored = [make_commit("e1", seq, run_id="r1") for seq in (1, 2, 3)]
    commits = MemoryCommitLog(stored)
    later = make_commit("e1", 4, run_id="r1")
    # Seq 3 was stored before the stream opened, and its record comes after it subscribed;
    # seq 4 is stored after that.
    fanout = _Fanout([Delivery(0, 2, stored[2].events[0]), Delivery(0, 3, later.events[0])])
    fanout.before_first_delivery = lambda: commits.add([later])
    seen = await _first_events(_stream(fanout, commits, history=False), 1)
    assert seen == [Position(4, 0).sequence]


async def test_live_fills_a_gap_after_its_anchor_from_the_store() -> None:
    commits = MemoryCommitLog([make_commit("e1", seq, run_id="r1") for seq in (1, 2)])
    third, fourth = make_commit("e1", 3, run_id="r1"), make_commit("e1", 4, run_id="r1")
    fanout = _Fanout([Delivery(0, 4, fourth.events[0])])  # seq 3's record never reaches it
    # Seq 3 and 4 are stored once the stream has anchored at seq 2 (its first wait).
    fanout.before_first_delivery = lambda: commits.add([third, fourth])
    seen = await _first_events(_stream(fanout, commits, history=False), 2)
    assert seen == [Position(3, 0).sequence, Position(4, 0).sequence]


async def test_live_on_an_execution_with_nothing_stored_takes_the_first_event() -> None:
    first = make_commit("e1", 1, run_id="r1")
    fanout = _Fanout([Delivery(0, 1, first.events[0])])
    seen = await _first_events(_stream(fanout, MemoryCommitLog([]), history=False), 1)
    assert seen == [Position(1, 0).sequence]
