"""Redelivered records answered from the store (services/engine/redelivery.py)."""

from __future__ import annotations

from itertools import count

import pytest

from schemas.commits import Commit
from services.engine.memory_event_store import MemoryEventStore
from services.engine.processor import CommandProcessor, StateCache
from tests.support.engine import command, record, start


class HidingStore(MemoryEventStore):
    """A store whose `get` misses one commit: a stream with a gap, which the memory store
    itself refuses to make."""

    def __init__(self, hidden: tuple[str, int]) -> None:
        super().__init__()
        self._hidden = hidden

    async def get(self, execution_id: str, seq: int) -> Commit | None:
        if (execution_id, seq) == self._hidden:
            return None
        return await super().get(execution_id, seq)


async def test_a_redelivered_record_over_a_gap_in_its_stream_names_the_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = HidingStore(("e1", 3))
    clock = count(1_700_000_000_000_000_000, 1000)
    records = [record(start("e1", "c1"), offset=0)] + [
        record(command("SignalExecution", "e1", f"c{n}", name="go"), offset=n - 1)
        for n in (2, 3, 4)
    ]
    await CommandProcessor(store, StateCache(100), lambda: next(clock)).process(records)

    # A fresh engine (nothing cached) is handed seq 3's record again: its commit is gone.
    fresh = CommandProcessor(store, StateCache(100), lambda: next(clock))
    out = await fresh.process([records[2]])

    assert "execution e1 has no commit 3 below its newest, 4: a gap in its stream" in caplog.text
    # (This store still finds the commit by its command id; FerretDB's gaps were commits
    # never written, answered "not applied again": tests/integration/test_engine_crash.py.)
    assert [(o.command_id, o.accepted, o.seq) for o in out.outcomes] == [("c3", True, 3)]
