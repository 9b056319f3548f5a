"""Applies a batch of command records to the event store: validate, decide, append.

Kafka-free on purpose: the app feeds it records and publishes what it returns, and
only then commits offsets. The order of effects is what makes a crash harmless:

1. invalid records become dead letters (never decided, never dropped);
2. each command is decided against its execution's state (cache, else the store);
3. the new commits go in (first commits of new executions unordered, the rest with one
   ordered insert);
4. the caller publishes events, tasks, outcomes and successor commands, then acks.

Steps 2 and 3 are separate stages (`decide`, `store`, `finish`) so that the caller can
decide the next batch while this one is stored (services/engine/pipeline.py).

A record redelivered after a crash is recognised by its source offset, which every
commit stores: all of one execution's commands share a partition (key = execution_id),
so an offset at or below the newest commit's means "already applied". The stored
commit is then re-published instead of deciding again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from schemas import admission
from schemas.commands import Command, parse_command
from schemas.commits import Commit, RejectedCommand, SourcePosition
from schemas.common import ExecutionStatus
from schemas.events import Event, EventType
from schemas.outcomes import CommandOutcome, RejectionCode
from schemas.tasks import WorkflowTask
from services.common.clock import ns_to_datetime
from services.common.ids import derived_id
from services.engine.domain import (
    Context,
    ExecutionState,
    Rejected,
    decide,
    fold,
    successor_commands,
)
from services.engine.event_store import AppendFailure, AppendReport, EventStore
from services.engine.workflow_tasks import derived_commands, start_failed_report

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InboundRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: InboundRecord
    reason: str
    """Short code: empty, too_large, invalid_json, unknown_type, schema_violation,
    key_mismatch, payload_refused (the admission rule, schemas/admission.py)."""
    detail: str


@dataclass(slots=True)
class Outbound:
    """Everything the caller must publish before it may commit the batch's offsets."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    """New and re-published commits, in the order their events must go out."""
    tasks: list[WorkflowTask] = field(default_factory=list)
    outcomes: list[CommandOutcome] = field(default_factory=list)
    follow_ups: list[Command] = field(default_factory=list)

    @property
    def events(self) -> list[Event]:
        return [e for c in self.commits for e in c.events]


@dataclass(frozen=True, slots=True)
class _Stream:
    """What the engine knows of one execution between batches."""

    state: ExecutionState | None
    seq: int
    source: SourcePosition | None
    partition: int


class StateCache:
    """Execution states of the partitions this instance owns, least recently used out."""

    def __init__(self, max_size: int) -> None:
        self._max = max_size
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._revoked: set[int] = set()

    def get(self, execution_id: str) -> _Stream | None:
        stream = self._streams.get(execution_id)
        if stream is not None:
            self._streams.move_to_end(execution_id)
        return stream

    def put(self, execution_id: str, stream: _Stream) -> None:
        self._streams[execution_id] = stream
        self._streams.move_to_end(execution_id)
        while len(self._streams) > self._max:
            self._streams.popitem(last=False)

    def drop(self, execution_ids: Collection[str]) -> None:
        for e in execution_ids:
            self._streams.pop(e, None)

    def forget_partitions_later(self, partitions: Collection[int]) -> None:
        """Partitions this instance lost; forgotten before the next batch is decided."""
        self._revoked.update(partitions)

    def apply_revocations(self) -> None:
        if self._revoked:
            gone = {e for e, s in self._streams.items() if s.partition in self._revoked}
            self.drop(gone)
            self._revoked.clear()

    def clear(self) -> None:
        self._streams.clear()

    def __len__(self) -> int:
        return len(self._streams)


@dataclass(slots=True)
class _Decided:
    """One parsed record's result within a round."""

    record: InboundRecord
    command: Command
    commit: Commit | None = None
    outcome: CommandOutcome | None = None
    replay: bool = False
    follow_ups: list[Command] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Stored:
    """What `store` did with a round: executions whose first commit was refused, the
    round's positions still answered by it, those appended in order, and how far."""

    refused: set[str]
    pending: list[int]
    new: list[int]
    report: AppendReport


@dataclass(slots=True)
class Plan:
    """A batch between `decide` and `finish`."""

    out: Outbound
    todo: list[tuple[InboundRecord, Command]]
    """The records of the current round (all valid ones at first; then those to redo)."""
    execution_ids: frozenset[str]
    decided: list[_Decided] = field(default_factory=list)
    assumed_new: set[str] = field(default_factory=set)
    must_read: set[str] = field(default_factory=set)
    rejection_streams: dict[str, int] = field(default_factory=dict)
    stored: _Stored | None = None
    clean: bool = True
    """False once a round had to be decided again: states cached meanwhile were wrong."""

    @property
    def stored_as_decided(self) -> bool:
        """The round just stored went in whole: nothing refused, nothing conflicting."""
        stored = self.stored
        return stored is not None and not stored.refused and stored.report.failure is None


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
        """Decide, store and finish one batch, strictly in turn."""
        plan = await self.decide(records)
        try:
            await self.store(plan)
        except BaseException:
            self.forget(plan)
            raise
        return await self.finish(plan)

    # The three stages, for callers that overlap one batch's `store` with the next
    # batch's `decide` (services/engine/pipeline.py):
    #
    # - `decide` parses and decides a batch against the cached states, which it updates
    #   as if the batch were stored (the next batch is decided on top of it);
    # - `store` appends the decided commits; it touches no cached state, so it may run
    #   while the next batch is being decided, but only once the batch before is
    #   finished (appends go in batch order);
    # - `finish` emits what was stored, and decides again (with reads) and stores
    #   whatever the store refused. `Plan.clean` then turns false: a batch decided
    #   meanwhile rests on states that were wrong, and must be forgotten and decided
    #   again.

    async def decide(
        self,
        records: Sequence[InboundRecord],
        settle: Callable[[], Awaitable[object]] | None = None,
    ) -> Plan:
        """Parse and decide a batch. `settle` finishes the batch whose store is still in
        flight; it is awaited before deciding when this batch needs stored history
        (a reset, or a record redelivered after it was applied)."""
        self._cache.apply_revocations()
        out = Outbound()
        parsed: list[tuple[InboundRecord, Command]] = []
        for record in records:
            command_or_dead = self._parse(record)
            if isinstance(command_or_dead, DeadLetter):
                out.dead_letters.append(command_or_dead)
            else:
                parsed.append((record, command_or_dead))
        plan = Plan(out, parsed, frozenset(c.execution_id for _, c in parsed))
        if settle is not None and self._reads_history(parsed):
            await settle()
        try:
            await self._decide(plan)
        except BaseException:
            self.forget(plan)
            raise
        return plan

    def forget(self, plan: Plan) -> None:
        """Drop the cached states of a batch's executions: what it decided may not be
        stored (it failed, or it is to be decided again)."""
        self._cache.drop(plan.execution_ids)

    def _reads_history(self, parsed: list[tuple[InboundRecord, Command]]) -> bool:
        for record, command in parsed:
            if command.type == "ResetExecution":
                return True
            stream = self._cache.get(command.execution_id)
            if stream is not None and _already_applied(stream, record):
                return True
        return False

    # --- validation --------------------------------------------------------------

    def _parse(self, record: InboundRecord) -> Command | DeadLetter:
        value = record.value
        if not value:
            return DeadLetter(record, "empty", "the record has no value")
        if len(value) > self._max_record_bytes:
            return DeadLetter(
                record, "too_large", f"{len(value)} bytes > limit {self._max_record_bytes}"
            )
        try:
            command = parse_command(value)
        except ValidationError as exc:
            return DeadLetter(record, _dead_letter_reason(exc), _summarise(exc))
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        if key != command.execution_id:
            # Another key would put this execution's commands on two partitions and
            # break per-execution ordering; refuse it rather than apply it out of order.
            return DeadLetter(
                record,
                "key_mismatch",
                f"record key {key!r} must equal execution_id {command.execution_id!r}",
            )
        # Before anything is decided or stored: a value no store or consumer downstream
        # can take would otherwise stop the projector (or a partition) later.
        refused = admission.refusal(command, len(value))
        if refused is not None:
            return DeadLetter(record, refused.code, str(refused))
        return command

    # --- decide and append --------------------------------------------------------

    async def _decide(self, plan: Plan) -> None:
        t0 = time.perf_counter()
        plan.assumed_new = await self._load(plan.todo, plan.must_read)
        t1 = time.perf_counter()
        plan.decided = await self._decide_round(plan.todo)  # decided[i] answers todo[i]
        # The streams a rejected command's id could be stored in, up to what was decided
        # (captured now: `store` must not read the cache, which moves on meanwhile).
        plan.rejection_streams = {}
        for d in plan.decided:
            if d.outcome is not None and not d.outcome.accepted:
                cached = self._cache.get(d.command.execution_id)
                plan.rejection_streams[d.command.execution_id] = cached.seq if cached else 0
        log.debug(
            "decided %d (%d assumed new): load %.1f ms, decide %.1f ms",
            len(plan.todo),
            len(plan.assumed_new),
            (t1 - t0) * 1000,
            (time.perf_counter() - t1) * 1000,
        )

    async def store(self, plan: Plan) -> None:
        """Append a decided round: first commits of executions assumed new, each on its
        own, then everything else in one ordered append."""
        t0 = time.perf_counter()
        decided = plan.decided
        await self._replay_known_rejections(decided, plan.rejection_streams)
        # Starts of executions assumed new (never read) each go in on their own; a
        # refused one means the execution or the command exists after all, so everything
        # of that execution in this round is decided again after a read. Everything else
        # goes in as one ordered append, in the same call.
        firsts = [
            i
            for i, d in enumerate(decided)
            if d.commit is not None
            and not d.replay
            and d.commit.seq == 1
            and d.command.execution_id in plan.assumed_new
        ]
        claimed = set(firsts)
        rest = [
            i
            for i, d in enumerate(decided)
            if d.commit is not None and not d.replay and i not in claimed
        ]
        round_ = await self._store.append_round(
            [c for i in firsts if (c := decided[i].commit) is not None],
            [c for i in rest if (c := decided[i].commit) is not None],
        )
        refused = {decided[firsts[p]].command.execution_id for p in round_.refused}
        if refused:
            log.debug("%d executions assumed new exist; reading them", len(refused))
        pending = [i for i, d in enumerate(decided) if d.command.execution_id not in refused]
        new = [i for i in rest if decided[i].command.execution_id not in refused]
        assert len(new) == len(round_.appended)
        report = round_.report
        plan.stored = _Stored(refused, pending, new, report)
        log.debug("stored %d: %.1f ms", len(decided), (time.perf_counter() - t0) * 1000)

    async def finish(self, plan: Plan) -> Outbound:
        """Emit what was stored; decide again, after reads, and store what was refused,
        until the whole batch is answered."""
        try:
            while not await self._settle_round(plan):
                plan.clean = False
                await self._decide(plan)
                await self.store(plan)
        except BaseException:
            self.forget(plan)
            raise
        return plan.out

    async def _settle_round(self, plan: Plan) -> bool:
        """Emit a stored round's answers; leave in `plan.todo` what must be decided again
        (then return False)."""
        stored, decided, out = plan.stored, plan.decided, plan.out
        if stored is None:
            raise RuntimeError("finish() before store()")
        plan.stored = None
        refused, pending, new, report = stored.refused, stored.pending, stored.new, stored.report
        if report.failure is None:
            self._emit([decided[i] for i in pending], out)
            again = refused
            redo_from = len(plan.todo)
        else:
            failed_at = new[report.inserted]
            failed = decided[failed_at]
            self._emit([decided[i] for i in pending if i < failed_at], out)
            redo_from = failed_at
            if report.failure is AppendFailure.DUPLICATE_COMMAND:
                # The same command id was applied before (a producer re-sent it).
                stored_commit = await self._store.find_by_command(failed.command.command_id)
                if stored_commit is None:
                    raise RuntimeError(f"duplicate command {failed.command.command_id} vanished")
                self._emit([self._replayed(failed.record, failed.command, stored_commit)], out)
                redo_from = failed_at + 1
            else:
                # Another engine instance wrote this seq first: reload, decide again.
                log.warning("seq conflict on %s; reloading", failed.command.execution_id)
            # Everything decided from the failed record on assumed commits that were not
            # stored (the failed record's execution included, even when nothing else of
            # it follows), and starts claimed after it were stored but not emitted: read
            # those executions again.
            again = refused | {decided[i].command.execution_id for i in pending if i >= failed_at}
        self._cache.drop(again)
        plan.must_read |= again
        redo = {i for i in pending if i >= redo_from}
        plan.todo = [
            item for i, item in enumerate(plan.todo) if i in redo or item[1].execution_id in refused
        ]
        return not plan.todo

    async def _replay_known_rejections(
        self, decided: list[_Decided], streams: dict[str, int]
    ) -> None:
        """A rejected command whose id is already stored was sent twice (a producer or
        client retry): answer it with the stored commit, as the first time.

        Only rejections need the look-up: a repeat the domain accepts is caught by the
        unique command_id index on append. Rejections are the rare path, so the query
        (a secondary-index read) stays off the hot path.
        """
        rejected = [
            i for i, d in enumerate(decided) if d.outcome is not None and not d.outcome.accepted
        ]
        if not rejected:
            return
        stored = await self._store.find_by_commands(
            {decided[i].command.command_id for i in rejected}, streams
        )
        for i in rejected:
            d = decided[i]
            commit = stored.get(d.command.command_id)
            if commit is not None:
                decided[i] = self._replayed(d.record, d.command, commit)
        # Those are not rejections after all: keep them out of the commits' records.
        for i, d in enumerate(decided):
            if d.commit is not None and not d.replay and d.commit.rejected:
                kept = [r for r in d.commit.rejected if r.command_id not in stored]
                if len(kept) != len(d.commit.rejected):
                    decided[i].commit = d.commit.model_copy(update={"rejected": kept})

    async def _load(
        self, todo: list[tuple[InboundRecord, Command]], must_read: set[str]
    ) -> set[str]:
        """Have every execution of `todo` in the cache; return those assumed new.

        An execution missing from the cache whose first command here is a start is
        assumed not to exist, without a read: starts of new executions are the bulk of a
        busy stream and the read would always miss. `append_first` checks the guess.
        """
        first_type: dict[str, str] = {}
        for _, command in todo:
            first_type.setdefault(command.execution_id, command.type)
        missing = [e for e in first_type if self._cache.get(e) is None]
        assumed_new = {
            e for e in missing if first_type[e] == "StartWorkflow" and e not in must_read
        }
        for execution_id in assumed_new:
            self._cache.put(execution_id, _Stream(None, 0, None, -1))
        to_read = [e for e in missing if e not in assumed_new]
        log.debug("reading %d of %d executions", len(to_read), len(first_type))
        if not to_read:
            return assumed_new
        latest = await self._store.latest(to_read)
        for execution_id in to_read:
            commit = latest.get(execution_id)
            if commit is None:
                self._cache.put(execution_id, _Stream(None, 0, None, -1))
            else:
                state = ExecutionState.model_validate(commit.state)
                partition = commit.source.partition if commit.source else -1
                self._cache.put(execution_id, _Stream(state, commit.seq, commit.source, partition))
        return assumed_new

    async def _decide_round(self, todo: list[tuple[InboundRecord, Command]]) -> list[_Decided]:
        decided: list[_Decided] = []
        rejected_since_commit: dict[str, list[RejectedCommand]] = {}
        first_of: dict[str, _Decided] = {}
        for record, command in todo:
            stream = self._cache.get(command.execution_id)
            assert stream is not None  # loaded above
            if _already_applied(stream, record):
                decided.append(await self._find_applied(record, command, stream))
                continue
            earlier = first_of.get(command.command_id)
            if earlier is not None:
                # Sent twice within one batch: the same answer as the first time.
                decided.append(_repeat(record, command, earlier))
                continue
            now_ns = self._clock_ns()
            ctx = await self._context(command, stream, now_ns, decided)
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
                decided.append(
                    _Decided(
                        record,
                        command,
                        outcome=_rejected(command, rejection, now_ns),
                        follow_ups=_after_rejection(command, rejection),
                    )
                )
                first_of[command.command_id] = decided[-1]
                continue
            state = fold(events, stream.state)
            assert state is not None
            source = SourcePosition(partition=record.partition, offset=record.offset)
            commit = Commit(
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
                state=state.model_dump(mode="json", exclude_none=True),
            )
            self._cache.put(
                command.execution_id, _Stream(state, commit.seq, source, record.partition)
            )
            decided.append(
                _Decided(
                    record,
                    command,
                    commit=commit,
                    outcome=_accepted(command, commit, state, now_ns),
                    follow_ups=_follow_ups(events, ctx, state),
                )
            )
            first_of[command.command_id] = decided[-1]
        return decided

    async def _context(
        self, command: Command, stream: _Stream, now_ns: int, decided: list[_Decided]
    ) -> Context:
        history: tuple[Event, ...] = ()
        if command.type == "ResetExecution" and stream.state is not None:
            history = await self._run_history(command.execution_id, stream.state.run_id, decided)
        return _context_for(command, now_ns, history)

    async def _run_history(
        self, execution_id: str, run_id: str, decided: list[_Decided]
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
            if d.commit is not None and d.commit.execution_id == execution_id and not d.replay:
                events.extend(e for e in d.commit.events if e.run_id == run_id)
        return tuple(events)

    async def _find_applied(
        self, record: InboundRecord, command: Command, stream: _Stream
    ) -> _Decided:
        """A redelivered record: answer it from what the store says happened to it."""
        seq = stream.seq
        while seq > 0:
            commit = await self._store.get(command.execution_id, seq)
            if commit is None or commit.source is None:
                break
            if commit.source.partition == record.partition:
                if commit.source.offset == record.offset:
                    return self._replayed(record, command, commit)
                for rejected in commit.rejected:
                    if rejected.command_id == command.command_id:
                        return _Decided(
                            record,
                            command,
                            outcome=_stored_rejection(command, rejected, commit),
                            follow_ups=_after_rejection(
                                command, Rejected(rejected.code, rejected.message)
                            ),
                        )
                if commit.source.offset < record.offset:
                    break
            seq -= 1
        stored = await self._store.find_by_command(command.command_id)
        if stored is not None:
            return self._replayed(record, command, stored)
        # Rejected in an earlier batch whose offsets were committed, then redelivered
        # anyway: it must not be decided against today's state. Say so.
        log.error("redelivered command %s has no stored outcome", command.command_id)
        return _Decided(
            record,
            command,
            outcome=_outcome(
                command,
                ns_to_datetime(self._clock_ns()),
                accepted=False,
                code=RejectionCode.INVALID_TRANSITION,
                message="command was redelivered after being processed; not applied again",
            ),
        )

    def _replayed(self, record: InboundRecord, command: Command, commit: Commit) -> _Decided:
        state = ExecutionState.model_validate(commit.state)
        ctx = _context_for(command, commit.events[0].timestamp_ns)
        return _Decided(
            record,
            command,
            commit=commit,
            outcome=_accepted(command, commit, state, commit.events[0].timestamp_ns),
            replay=True,
            follow_ups=_follow_ups(commit.events, ctx, state),
        )

    def _emit(self, decided: Sequence[_Decided], out: Outbound) -> None:
        for d in decided:
            if d.commit is not None:
                out.commits.append(d.commit)
                out.tasks.extend(tasks_for(d.commit))
            if d.outcome is not None:
                out.outcomes.append(d.outcome)
            out.follow_ups.extend(d.follow_ups)


def _follow_ups(events: list[Event], ctx: Context, state: ExecutionState) -> list[Command]:
    """Commands a commit sends to other executions (all with ids derived from its events)."""
    return successor_commands(events, ctx, state) + derived_commands(events, ctx, state)


def _after_rejection(command: Command, rejection: Rejected) -> list[Command]:
    """A child's refused start still reaches its parent (derived from the start's id)."""
    if command.type != "StartWorkflow":
        return []
    report = start_failed_report(command, rejection)
    return [] if report is None else [report]


# Which ids each command type can need; deriving them costs a hash each.
_NEEDS_RUN_ID = frozenset({"StartWorkflow", "ResetExecution", "ContinueAsNew"})
_NEEDS_SUCCESSOR_IDS = frozenset({"ContinueAsNew"})


def _continues_as_new(command: Command) -> bool:
    if command.type == "ContinueAsNew":
        return True
    if command.type != "CompleteWorkflowTask" or not command.payload.steps:
        return False
    return command.payload.steps[-1].kind == "continue_as_new"


def _context_for(command: Command, now_ns: int, history: tuple[Event, ...] = ()) -> Context:
    """Ids derive from the command id, so a decision taken again picks the same ids."""
    cid = command.command_id
    successor = _continues_as_new(command)
    return Context(
        now_ns=now_ns,
        new_run_id=derived_id(cid, "run") if command.type in _NEEDS_RUN_ID else "",
        new_execution_id=derived_id(cid, "execution") if successor else "",
        successor_run_id=derived_id(cid, "successor-run") if successor else "",
        history=history,
    )


def _repeat(record: InboundRecord, command: Command, first: _Decided) -> _Decided:
    """A repeat of a command decided earlier in the same round: re-publish, do not re-apply."""
    return _Decided(
        record,
        command,
        commit=first.commit,
        outcome=first.outcome,
        replay=first.commit is not None,
        follow_ups=first.follow_ups,
    )


def _already_applied(stream: _Stream, record: InboundRecord) -> bool:
    source = stream.source
    return (
        source is not None
        and source.partition == record.partition
        and record.offset <= source.offset
    )


def _outcome(command: Command, decided_at: datetime, **fields: Any) -> CommandOutcome:
    return CommandOutcome(
        command_id=command.command_id,
        command_type=command.type,
        execution_id=command.execution_id,
        decided_at=decided_at,
        **fields,
    )


def _accepted(
    command: Command, commit: Commit, state: ExecutionState, now_ns: int
) -> CommandOutcome:
    return _outcome(
        command,
        ns_to_datetime(now_ns),
        accepted=True,
        seq=commit.seq,
        run_id=state.run_id,
        status=state.status,
    )


def _rejected(command: Command, rejection: Rejected, now_ns: int) -> CommandOutcome:
    return _outcome(
        command,
        ns_to_datetime(now_ns),
        accepted=False,
        code=rejection.code,
        message=rejection.message,
    )


def _stored_rejection(
    command: Command, rejected: RejectedCommand, commit: Commit
) -> CommandOutcome:
    return _outcome(
        command, commit.committed_at, accepted=False, code=rejected.code, message=rejected.message
    )


# The events that give the workflow code something new (docs/worker-protocol.md) and the
# task each calls for.
_TASK_KINDS: dict[EventType, Literal["run", "signal", "stop"]] = {
    EventType.WORKFLOW_EXECUTION_STARTED: "run",
    EventType.WORKFLOW_EXECUTION_RETRY_STARTED: "run",
    EventType.WORKFLOW_EXECUTION_SIGNALED: "signal",
    EventType.TIMER_FIRED: "run",
    EventType.CHILD_WORKFLOW_STARTED: "run",
    EventType.CHILD_WORKFLOW_START_FAILED: "run",
    EventType.CHILD_WORKFLOW_CLOSED: "run",
    EventType.WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "run",
    EventType.WORKFLOW_EXECUTION_CANCEL_REQUESTED: "run",
    EventType.WORKFLOW_EXECUTION_CANCELED: "stop",
    EventType.WORKFLOW_EXECUTION_TERMINATED: "stop",
    EventType.WORKFLOW_EXECUTION_TIMED_OUT: "stop",
}
_RUN_OPENING = frozenset(
    {EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_RETRY_STARTED}
)
# Activity events call for a task only when reported asynchronously (RecordActivityTask);
# in a CompleteWorkflowTask the worker that ran the activity already goes on.
_ASYNC_ACTIVITY = frozenset(
    {
        EventType.ACTIVITY_TASK_COMPLETED,
        EventType.ACTIVITY_TASK_RETRYING,
        EventType.ACTIVITY_TASK_FAILED,
    }
)


def tasks_for(commit: Commit) -> list[WorkflowTask]:
    """Work for workers that a commit's events call for (derived, so replays agree)."""
    tasks: list[WorkflowTask] = []
    started = commit.state.get("started") or {}
    for event in commit.events:
        kind = _TASK_KINDS.get(event.type)
        if kind is None:
            if event.type not in _ASYNC_ACTIVITY or commit.command_type != "RecordActivityTask":
                continue
            kind = "run"
        attrs = event.attributes
        tasks.append(
            WorkflowTask(
                task_id=event.event_id,
                kind=kind,
                execution_id=event.execution_id,
                run_id=event.run_id,
                seq=event.seq,
                workflow_name=event.workflow_name,
                attempt=getattr(attrs, "attempt", None)
                if event.type in _RUN_OPENING
                else int(commit.state.get("attempt") or 1),
                input=_payload_value(getattr(attrs, "input", None)),
                signal_name=getattr(attrs, "signal_name", None),
                # The run's deployment routes every task of it (the STARTED event's own,
                # else the state's after the commit).
                deployment_name=getattr(attrs, "deployment_name", None)
                if event.type is EventType.WORKFLOW_EXECUTION_STARTED
                else started.get("deployment_name"),
            )
        )
    return tasks


def _payload_value(payload: object) -> object:
    return getattr(payload, "value", None)


def _dead_letter_reason(exc: ValidationError) -> str:
    kinds = {e["type"] for e in exc.errors()}
    if "json_invalid" in kinds or "json_type" in kinds:
        return "invalid_json"
    if kinds & {"union_tag_invalid", "union_tag_not_found"}:
        return "unknown_type"
    return "schema_violation"


def _summarise(exc: ValidationError, limit: int = 2000) -> str:
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '<record>'}: {e['msg']}" for e in exc.errors()
    ]
    return "; ".join(parts)[:limit]


__all__ = [
    "CommandProcessor",
    "DeadLetter",
    "ExecutionStatus",
    "InboundRecord",
    "Outbound",
    "Plan",
    "StateCache",
    "tasks_for",
]
