"""Decides a batch of command records and builds what it answers; Kafka-free.

The caller feeds it records and publishes what it returns, and only then commits
offsets. The order of effects is what makes a crash harmless:

1. invalid records become dead letters (never decided, never dropped);
2. each command is decided against its execution's state (cache, else the store);
3. the new commits go in (first commits of new executions unordered, the rest with one
   ordered append);
4. the caller publishes events, tasks, outcomes and follow-up commands, then commits.

The steps are separate calls so that a caller can decide the next batch while this one
is stored (services/engine/pipeline.py), and the processor never calls back into it:

- `parse` splits records into commands and dead letters;
- `decide` decides them against the cached states, which it moves on as if the batch
  were stored (the next batch is decided on top of it);
- `store` appends the decided commits; it touches no cached state, so it may run while
  the next batch is decided, but only after the batch before is completed (appends go
  in batch order);
- `complete` answers what was stored, and decides again (after reads) and stores what
  the store refused. `Completed.redecided` then says that a batch decided meanwhile
  rests on states that were wrong: forget it and decide it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from schemas import admission
from schemas.commands import Command
from schemas.commits import Commit, RejectedCommand, SourcePosition
from schemas.events import Event
from services.common.clock import ns_to_datetime
from services.engine.context import context_for
from services.engine.domain import ExecutionState, Rejected, decide, fold
from services.engine.event_store import AppendFailure, AppendReport, EventStore
from services.engine.outbound import Decided, Outbound
from services.engine.outcomes import accepted, after_rejection, follow_ups, rejected
from services.engine.redelivery import (
    already_applied,
    find_applied,
    repeated,
    replay_known_rejections,
    replayed,
)
from services.engine.state_cache import StateCache, StreamHead
from services.engine.validation import DeadLetter, InboundRecord, parse_record

log = logging.getLogger(__name__)

Todo = tuple[tuple[InboundRecord, Command], ...]

# `state.model_dump(mode="json", exclude_none=True)` without `model_dump`'s Python
# wrapper (the same serializer, the same dict): ~1 µs less per command.
_snapshot = ExecutionState.__pydantic_serializer__.to_python


@dataclass(frozen=True, slots=True)
class Parsed:
    """A batch's records, split into commands (in record order) and dead letters."""

    commands: Todo
    dead_letters: tuple[DeadLetter, ...]
    execution_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Round:
    """One pass of deciding over some of a batch's commands: `decided[i]` answers
    `todo[i]`."""

    todo: Todo
    decided: tuple[Decided, ...]
    assumed_new: frozenset[str]
    """Executions decided as new without a read (their first commit checks the guess)."""
    rejection_streams: Mapping[str, int]
    """Where a rejected command's id could be stored: execution id → newest seq decided
    (captured when deciding: `store` must not read the cache, which moves on meanwhile)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A decided batch, ready to be stored."""

    parsed: Parsed
    round: Round


@dataclass(frozen=True, slots=True)
class StoredRound:
    """What `store` did with a round."""

    todo: Todo
    decided: tuple[Decided, ...]
    refused: frozenset[str]
    """Executions assumed new whose first commit was refused: they exist after all."""
    answered: tuple[int, ...]
    """Positions the round still answers (those of refused executions excluded)."""
    appended: tuple[int, ...]
    """Positions given to the ordered append, in order."""
    report: AppendReport

    @property
    def went_in_whole(self) -> bool:
        """Nothing refused, nothing conflicting: the states cached when deciding hold."""
        return not self.refused and self.report.failure is None


@dataclass(frozen=True, slots=True)
class Completed:
    out: Outbound
    redecided: bool
    """Part of the batch had to be decided again: batches decided on top of it are stale."""


class CommandProcessor:
    def __init__(
        self,
        store: EventStore,
        cache: StateCache,
        clock_ns: Callable[[], int],
        max_record_bytes: int = admission.MAX_COMMAND_BYTES,
    ) -> None:
        self._store = store
        self._cache = cache
        self._clock_ns = clock_ns
        self._max_record_bytes = max_record_bytes

    async def process(self, records: Sequence[InboundRecord]) -> Outbound:
        """Decide, store and complete one batch, strictly in turn."""
        decision = await self.decide(self.parse(records))
        try:
            stored = await self.store(decision.round)
        except BaseException:
            self.forget(decision.parsed)
            raise
        return (await self.complete(decision, stored)).out

    def parse(self, records: Sequence[InboundRecord]) -> Parsed:
        commands: list[tuple[InboundRecord, Command]] = []
        dead_letters: list[DeadLetter] = []
        for record in records:
            parsed = parse_record(record, self._max_record_bytes)
            if isinstance(parsed, DeadLetter):
                dead_letters.append(parsed)
            else:
                commands.append((record, parsed))
        return Parsed(
            tuple(commands), tuple(dead_letters), frozenset(c.execution_id for _, c in commands)
        )

    def needs_stored_history(self, parsed: Parsed) -> bool:
        """Whether deciding reads stored commits (a reset reads its run's events; a
        redelivered record is answered from its commit): the batch before must then be
        stored before this one is decided."""
        for record, command in parsed.commands:
            if command.type == "ResetExecution":
                return True
            stream = self._cache.get(command.execution_id)
            if stream is not None and already_applied(stream, record):
                return True
        return False

    async def decide(self, parsed: Parsed) -> Decision:
        self._cache.apply_revocations()
        try:
            round_ = await self._decide_round(parsed.commands, frozenset())
        except BaseException:
            self.forget(parsed)
            raise
        return Decision(parsed, round_)

    def forget(self, parsed: Parsed) -> None:
        """Drop the cached states of a batch's executions: what it decided may not be
        stored (it failed, or it is to be decided again)."""
        self._cache.drop(parsed.execution_ids)

    async def store(self, round_: Round) -> StoredRound:
        """Append a decided round: first commits of executions assumed new, each on its
        own, then everything else in one ordered append, in the same call."""
        t0 = time.perf_counter()
        decided = await replay_known_rejections(
            self._store, round_.decided, round_.rejection_streams
        )
        # A refused first commit means the execution or the command exists after all:
        # everything of that execution in this round is decided again after a read.
        firsts = [
            i
            for i, d in enumerate(decided)
            if d.appends
            and d.commit is not None
            and d.commit.seq == 1
            and d.command.execution_id in round_.assumed_new
        ]
        claimed = set(firsts)
        rest = [i for i, d in enumerate(decided) if d.appends and i not in claimed]
        result = await self._store.append_round(
            [c for i in firsts if (c := decided[i].commit) is not None],
            [c for i in rest if (c := decided[i].commit) is not None],
        )
        refused = frozenset(decided[firsts[p]].command.execution_id for p in result.refused)
        if refused:
            log.debug("%d executions assumed new exist; reading them", len(refused))
        answered = tuple(i for i, d in enumerate(decided) if d.command.execution_id not in refused)
        appended = tuple(i for i in rest if decided[i].command.execution_id not in refused)
        assert len(appended) == len(result.appended)
        log.debug("stored %d: %.1f ms", len(decided), (time.perf_counter() - t0) * 1000)
        return StoredRound(round_.todo, decided, refused, answered, appended, result.report)

    async def complete(self, decision: Decision, stored: StoredRound) -> Completed:
        """Answer what was stored; decide again, after reads, and store what was refused,
        until the whole batch is answered."""
        out = Outbound(dead_letters=list(decision.parsed.dead_letters))
        must_read: set[str] = set()
        redecided = False
        try:
            while True:
                todo, again = await self._answer(stored, out)
                self._cache.drop(again)
                if not todo:
                    return Completed(out, redecided)
                redecided = True
                must_read |= again
                stored = await self.store(await self._decide_round(todo, frozenset(must_read)))
        except BaseException:
            self.forget(decision.parsed)
            raise

    async def _answer(self, stored: StoredRound, out: Outbound) -> tuple[Todo, set[str]]:
        """Add a stored round's answers to `out`; return what must be decided again, and
        the executions to read first."""
        decided, refused, report = stored.decided, stored.refused, stored.report
        if report.failure is None:
            out.add(decided[i] for i in stored.answered)
            again = set(refused)
            redo_from = len(stored.todo)
        else:
            failed_at = stored.appended[report.inserted]
            failed = decided[failed_at]
            out.add(decided[i] for i in stored.answered if i < failed_at)
            redo_from = failed_at
            if report.failure is AppendFailure.DUPLICATE_COMMAND:
                # The same command id was applied before (a producer re-sent it).
                commit = await self._store.find_by_command(failed.command.command_id)
                if commit is None:
                    raise RuntimeError(f"duplicate command {failed.command.command_id} vanished")
                out.add([replayed(failed.record, failed.command, commit)])
                redo_from = failed_at + 1
            else:
                # Another engine instance wrote this seq first: reload, decide again.
                log.warning("seq conflict on %s; reloading", failed.command.execution_id)
            # Everything decided from the failed record on rests on assumed commits that
            # were not stored (the failed record's execution included, even when nothing
            # else of it follows), and starts claimed after it were stored but not
            # answered: read those executions again.
            again = set(refused) | {
                decided[i].command.execution_id for i in stored.answered if i >= failed_at
            }
        redo = {i for i in stored.answered if i >= redo_from}
        todo = tuple(
            item
            for i, item in enumerate(stored.todo)
            if i in redo or item[1].execution_id in refused
        )
        return todo, again

    async def _decide_round(self, todo: Todo, must_read: frozenset[str]) -> Round:
        t0 = time.perf_counter()
        assumed_new = await self._cache.load(self._store, [c for _, c in todo], must_read)
        t1 = time.perf_counter()
        decided = await self._decide_each(todo)
        rejection_streams: dict[str, int] = {}
        for d in decided:
            if d.rejected:
                cached = self._cache.get(d.command.execution_id)
                rejection_streams[d.command.execution_id] = cached.seq if cached else 0
        log.debug(
            "decided %d (%d assumed new): load %.1f ms, decide %.1f ms",
            len(todo),
            len(assumed_new),
            (t1 - t0) * 1000,
            (time.perf_counter() - t1) * 1000,
        )
        return Round(todo, tuple(decided), assumed_new, rejection_streams)

    async def _decide_each(self, todo: Todo) -> list[Decided]:
        decided: list[Decided] = []
        rejected_since_commit: dict[str, list[RejectedCommand]] = {}
        first_of: dict[str, Decided] = {}
        for record, command in todo:
            stream = self._cache.get(command.execution_id)
            assert stream is not None  # loaded above
            if already_applied(stream, record):
                decided.append(
                    await find_applied(self._store, record, command, stream, self._clock_ns())
                )
                continue
            earlier = first_of.get(command.command_id)
            if earlier is not None:
                # Sent twice within one batch: the same answer as the first time.
                decided.append(repeated(record, command, earlier))
                continue
            now_ns = self._clock_ns()
            history: tuple[Event, ...] = ()
            if command.type == "ResetExecution" and stream.state is not None:
                history = await self._run_history(
                    command.execution_id, stream.state.run_id, decided
                )
            ctx = context_for(command, now_ns, history)
            try:
                events = decide(stream.state, command, ctx)
            except Rejected as rejection:
                rejected_since_commit.setdefault(command.execution_id, []).append(
                    RejectedCommand(
                        command_id=command.command_id,
                        command_type=command.type,
                        offset=record.offset,
                        code=rejection.code,
                        message=rejection.message,
                    )
                )
                answer = Decided(
                    record,
                    command,
                    outcome=rejected(command, rejection, now_ns),
                    follow_ups=tuple(after_rejection(command, rejection)),
                )
                decided.append(answer)
                first_of[command.command_id] = answer
                continue
            state = fold(events, stream.state)
            assert state is not None
            # Built from validated parts (the command, the domain's events): not
            # validated again (FrozenModel.trusted).
            source = SourcePosition.trusted(partition=record.partition, offset=record.offset)
            commit = Commit.trusted(
                execution_id=command.execution_id,
                seq=events[0].seq,
                command_id=command.command_id,
                command_type=command.type,
                run_id=events[-1].run_id,
                events=events,
                committed_at=ns_to_datetime(now_ns),
                source=source,
                rejected=rejected_since_commit.pop(command.execution_id, []),
                # None fields left out: they load back as their default (None).
                state=_snapshot(state, mode="json", exclude_none=True),
            )
            self._cache.put(
                command.execution_id, StreamHead(state, commit.seq, source, record.partition)
            )
            answer = Decided(
                record,
                command,
                commit=commit,
                outcome=accepted(command, commit, state, commit.committed_at),
                follow_ups=tuple(follow_ups(events, ctx, state)),
            )
            decided.append(answer)
            first_of[command.command_id] = answer
        return decided

    async def _run_history(
        self, execution_id: str, run_id: str, decided: list[Decided]
    ) -> tuple[Event, ...]:
        """The latest run's events: stored ones plus those decided earlier in this batch."""
        events: list[Event] = []
        pending = {
            d.commit.seq for d in decided if d.commit and d.commit.execution_id == execution_id
        }
        async for commit in self._store.read_stream(execution_id):
            if commit.seq not in pending:
                events.extend(e for e in commit.events if e.run_id == run_id)
        for d in decided:
            if d.appends and d.commit is not None and d.commit.execution_id == execution_id:
                events.extend(e for e in d.commit.events if e.run_id == run_id)
        return tuple(events)


__all__ = [
    "CommandProcessor",
    "Completed",
    "DeadLetter",
    "Decision",
    "InboundRecord",
    "Outbound",
    "Parsed",
    "StateCache",
    "StoredRound",
]
