"""What the engine knows of each execution between batches, so that most commands are
decided without a read."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from schemas.commands import Command
from schemas.commits import Commit, SourcePosition
from services.engine.domain import ExecutionState
from services.engine.event_store import EventStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamHead:
    """An execution's state after its newest commit (`seq`, 0 if none), and the record
    that commit came from (how a redelivered record is recognised)."""

    state: ExecutionState | None
    seq: int
    source: SourcePosition | None
    partition: int

    @classmethod
    def after(cls, commit: Commit) -> StreamHead:
        """The head of a stream whose newest commit is `commit`."""
        state = ExecutionState.model_validate(commit.state)
        partition = commit.source.partition if commit.source else -1
        return cls(state, commit.seq, commit.source, partition)


NEW_STREAM = StreamHead(None, 0, None, -1)


class StateCache:
    """Execution states of the partitions this instance owns, least recently used out."""

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._streams: OrderedDict[str, StreamHead] = OrderedDict()
        self._revoked: set[int] = set()

    def __len__(self) -> int:
        return len(self._streams)

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

    async def load(
        self, store: EventStore, commands: Iterable[Command], must_read: Collection[str]
    ) -> frozenset[str]:
        """Have the execution of every command cached; return those assumed new.

        An execution missing from the cache whose first command here is a start is
        assumed not to exist, without a read (unless in `must_read`): starts of new
        executions are the bulk of a busy stream and the read would always miss. The
        store's `append_first` checks the guess.
        """
        first_type: dict[str, str] = {}
        for command in commands:
            first_type.setdefault(command.execution_id, command.type)
        missing = [e for e in first_type if self.get(e) is None]
        assumed_new = frozenset(
            e for e in missing if first_type[e] == "StartWorkflow" and e not in must_read
        )
        for execution_id in assumed_new:
            self.put(execution_id, NEW_STREAM)
        to_read = [e for e in missing if e not in assumed_new]
        log.debug("reading %d of %d executions", len(to_read), len(first_type))
        if to_read:
            latest = await store.latest(to_read)
            for execution_id in to_read:
                commit = latest.get(execution_id)
                self.put(execution_id, StreamHead.after(commit) if commit else NEW_STREAM)
        return assumed_new

    def forget_partitions_later(self, partitions: Collection[int]) -> None:
        """Partitions this instance lost; forgotten before the next batch is decided
        (the rebalance listener runs while a batch may be being decided)."""
        self._revoked.update(partitions)

    def apply_revocations(self) -> None:
        if self._revoked:
            gone = {e for e, s in self._streams.items() if s.partition in self._revoked}
            self.drop(gone)
            self._revoked.clear()
