"""Holding back the events of just-started executions, so one write covers their next
commits too.

A new execution's first batch inserts its run row (holding its first history chunk, the
head) and pointer; if its next commit (a one-activity workflow's completion, ~100 ms
later) lands in the next batch, both documents are replaced (three before heads: the
chunk 0 document too). On FerretDB a replace costs about six inserts (a query and a
write transaction each; docs/read-models.md, "Measurements"), so a workflow that straddles
two batches costs the store about three times what one whose commits come in one batch
does. The projector therefore keeps the events of an execution that *started* in a batch
and is still open at its end, with its later events, until one of them closes the run or
`linger` seconds have passed since it was first held: a workflow that completes within
that time is written once, by inserts.

What it does to the guarantees:
- offsets: a partition's committed offset never passes a held event (`Plan.offsets`),
  so a crash or a rebalance re-delivers it (the projector's inserts and guards make the
  re-delivery harmless, as for any batch); the projector group's committed offsets still
  mean "every event before them is in the store" (the API's run list index relies on it);
- lag: a new run reaches the read models up to `linger` later. Point reads fold the
  commits a projection lacks (docs/read-models.md, "Read guarantees"); lists on MongoDB
  see the run later; on FerretDB lists come from the API's own index of the events topic.
- nothing is held when a batch is full (the projection is behind), beyond `max_events`,
  or when `linger` is 0.

Pure bookkeeping, no I/O: `plan` decides what a batch projects and keeps; the caller
writes, then `adopt`s the plan (a failed batch adopts nothing, so what was held stays
held and the batch's records are consumed again). `forget` drops everything when
partitions move: their positions go back to the committed offsets, which precede every
held event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.events import Event, closes_run


@dataclass(frozen=True, slots=True)
class Consumed:
    """One event as read from the topic: where it came from."""

    event: Event | None
    """None for a record that could not be read (it is skipped, its offset consumed)."""
    partition: int
    offset: int


@dataclass(slots=True)
class _Held:
    events: list[Event]
    partition: int
    first_offset: int
    since: float


@dataclass(slots=True)
class Plan:
    """What one pass projects, and what the holder looks like once it is written."""

    project: list[Event]
    partitions: dict[str, int]
    """The partition of each execution among `project` (for parking)."""
    held: dict[str, _Held]
    consumed: dict[int, int]
    generation: int
    offsets: dict[int, int] = field(default_factory=dict)
    """Offsets to commit once `project` is written: per partition, the first held event's
    offset, else the offset after the last record consumed; only those that moved."""


class HeldEvents:
    def __init__(self, linger: float, max_events: int) -> None:
        self.linger = linger
        self.max_events = max_events
        self._held: dict[str, _Held] = {}
        self._consumed: dict[int, int] = {}  # partition -> offset after its last record
        self._committed: dict[int, int] = {}  # partition -> what we last committed
        self.generation = 0

    def __len__(self) -> int:
        return sum(len(h.events) for h in self._held.values())

    def oldest(self) -> float | None:
        """When the longest-held execution was first held (None: nothing held)."""
        return min((h.since for h in self._held.values()), default=None)

    def forget(self) -> None:
        """Partitions moved: their positions go back to the committed offsets, which are
        at or before every held event, so what was held is consumed again."""
        self._held.clear()
        self._consumed.clear()
        self._committed.clear()
        self.generation += 1

    def plan(self, batch: Sequence[Consumed], now: float, may_hold: bool = True) -> Plan:
        """Which events to project now (held ones whose time is up or whose execution
        has new events, and the batch's), and which to keep. `may_hold` False (the
        batch is full: the projection is behind) releases everything."""
        may_hold = may_hold and self.linger > 0
        consumed = dict(self._consumed)
        # Per execution, its held events then the batch's, in stream order.
        pending: dict[str, _Held] = {
            x: _Held(list(h.events), h.partition, h.first_offset, h.since)
            for x, h in self._held.items()
        }
        fresh_here: set[str] = set()
        for c in batch:
            consumed[c.partition] = max(consumed.get(c.partition, 0), c.offset + 1)
            e = c.event
            if e is None:
                continue
            entry = pending.get(e.execution_id)
            if entry is None:
                entry = pending[e.execution_id] = _Held([], c.partition, c.offset, now)
                if e.seq == 1 and e.index == 0:
                    fresh_here.add(e.execution_id)
            entry.events.append(e)

        held: dict[str, _Held] = {}
        budget = self.max_events if may_hold else 0
        project: list[Event] = []
        partitions: dict[str, int] = {}
        for x, entry in pending.items():
            keep = (
                (x in self._held or x in fresh_here)
                and now - entry.since < self.linger
                and not any(closes_run(e) for e in entry.events)
                and len(entry.events) <= budget
            )
            if keep:
                held[x] = entry
                budget -= len(entry.events)
            else:
                project.extend(entry.events)
                partitions[x] = entry.partition

        offsets: dict[int, int] = {}
        firsts: dict[int, int] = {}
        for entry in held.values():
            firsts[entry.partition] = min(
                firsts.get(entry.partition, entry.first_offset), entry.first_offset
            )
        for partition, after in consumed.items():
            upto = firsts.get(partition, after)
            if self._committed.get(partition) != upto:
                offsets[partition] = upto
        return Plan(project, partitions, held, consumed, self.generation, offsets)

    def adopt(self, plan: Plan, committed: bool = True) -> None:
        """`plan.project` is written (and `plan.offsets` committed, if `committed`): hold
        what it keeps (unless partitions moved since the plan was made: then nothing is
        kept). Offsets not committed are committed with a later plan's."""
        if plan.generation != self.generation:
            return
        self._held = plan.held
        self._consumed = plan.consumed
        if committed:
            self._committed.update(plan.offsets)
