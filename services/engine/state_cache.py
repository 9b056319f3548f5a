"""What the engine knows of each execution between batches, so that most commands are
decided without a read."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from schemas.commits import SourcePosition
from services.engine.domain import ExecutionState


@dataclass(frozen=True, slots=True)
class StreamHead:
    """An execution's state after its newest commit (`seq`, 0 if none), and the record
    that commit came from (how a redelivered record is recognised)."""

    state: ExecutionState | None
    seq: int
    source: SourcePosition | None
    partition: int


NEW_STREAM = StreamHead(None, 0, None, -1)


class StateCache:
    """Execution states of the partitions this instance owns, least recently used out."""

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._streams: OrderedDict[str, StreamHead] = OrderedDict()
        self._revoked: set[int] = set()

    def get(self, execution_id: str) -> StreamHead | None:
        stream = self._streams.get(execution_id)
        if stream is not None:
            self._streams.move_to_end(execution_id)
        return stream

    def put(self, execution_id: str, stream: StreamHead) -> None:
        self._streams[execution_id] = stream
        self._streams.move_to_end(execution_id)
        while len(self._streams) > self._max:
            self._streams.popitem(last=False)

    def drop(self, execution_ids: Collection[str]) -> None:
        for e in execution_ids:
            self._streams.pop(e, None)

    def forget_partitions_later(self, partitions: Collection[int]) -> None:
        """Partitions this instance lost; forgotten before the next batch is decided
        (the rebalance listener runs while a batch may be being decided)."""
        self._revoked.update(partitions)

    def apply_revocations(self) -> None:
        if self._revoked:
            gone = {e for e, s in self._streams.items() if s.partition in self._revoked}
            self.drop(gone)
            self._revoked.clear()
