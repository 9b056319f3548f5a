"""Answers for commands that were applied before: a record redelivered after a crash or
a rebalance, and a command id sent twice. They are answered from the store, never
decided again.

A redelivered record is recognised by its source offset, which every commit stores: all
of one execution's commands share a partition (key = execution_id), so an offset at or
below the newest commit's means "already applied".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from schemas.commands import Command
from schemas.commits import Commit
from services.common.clock import ns_to_datetime
from services.engine.context import context_for
from services.engine.domain import ExecutionState, Rejected
from services.engine.event_store import EventStore
from services.engine.outbound import Decided
from services.engine.outcomes import (
    accepted,
    after_rejection,
    follow_ups,
    not_reapplied,
    stored_rejection,
)
from services.engine.state_cache import StreamHead
from services.engine.validation import InboundRecord

log = logging.getLogger(__name__)


def already_applied(stream: StreamHead, record: InboundRecord) -> bool:
    """Whether the record is at or before the one the execution's newest commit came from."""
    source = stream.source
    return (
        source is not None
        and source.partition == record.partition
        and record.offset <= source.offset
    )


def replayed(record: InboundRecord, command: Command, commit: Commit) -> Decided:
    """The answer `commit` gave the command when it was stored."""
    state = ExecutionState.model_validate(commit.state)
    decided_ns = commit.events[0].timestamp_ns
    ctx = context_for(command, decided_ns)
    return Decided(
        record,
        command,
        commit=commit,
        outcome=accepted(command, commit, state, ns_to_datetime(decided_ns)),
        replay=True,
        follow_ups=tuple(follow_ups(commit.events, ctx, state)),
    )


def repeated(record: InboundRecord, command: Command, first: Decided) -> Decided:
    """A command id seen earlier in the same round: the same answer, not applied again."""
    return replace(first, record=record, command=command, replay=first.commit is not None)


async def find_applied(
    store: EventStore, record: InboundRecord, command: Command, stream: StreamHead, now_ns: int
) -> Decided:
    """A redelivered record: answer it from what the store says happened to it."""
    seq = stream.seq
    while seq > 0:
        commit = await store.get(command.execution_id, seq)
        if commit is None and seq < stream.seq:
            # Seqs are contiguous from 1 and `stream.seq` was read: a missing one below it
            # is a gap in the store (docs/engine-performance.md, "2026-12-06: a gap after
            # a refused commit"), not a rejection from long ago. Say so: what follows
            # cannot tell the two apart.
            log.error(
                "execution %s has no commit %d below its newest, %d: a gap in its stream",
                command.execution_id,
                seq,
                stream.seq,
            )
        if commit is None or commit.source is None:
            break
        if commit.source.partition == record.partition:
            if commit.source.offset == record.offset:
                return replayed(record, command, commit)
            for rejection in commit.rejected:
                if rejection.command_id == command.command_id:
                    return Decided(
                        record,
                        command,
                        outcome=stored_rejection(command, rejection, commit),
                        follow_ups=tuple(
                            after_rejection(command, Rejected(rejection.code, rejection.message))
                        ),
                    )
            if commit.source.offset < record.offset:
                break
        seq -= 1
    stored = await store.find_by_command(command.command_id)
    if stored is not None:
        return replayed(record, command, stored)
    # Rejected in an earlier batch whose offsets were committed, then redelivered anyway:
    # it must not be decided against today's state. Say so.
    log.error("redelivered command %s has no stored outcome", command.command_id)
    return Decided(record, command, outcome=not_reapplied(command, now_ns))


async def replay_known_rejections(
    store: EventStore, decided: Sequence[Decided], streams: Mapping[str, int]
) -> tuple[Decided, ...]:
    """`decided` with each rejected command whose id is stored already (sent twice by a
    producer or client retry) answered by the stored commit, as the first time.

    Only rejections need the look-up: a repeat the domain accepts is caught by the unique
    command_id index on append. Rejections are the rare path, so the query (a
    secondary-index read) stays off the hot path. `streams`: where those commands'
    commits can be (execution id → newest seq decided).
    """
    rejected = [d for d in decided if d.rejected]
    if not rejected:
        return tuple(decided)
    stored = await store.find_by_commands({d.command.command_id for d in rejected}, streams)
    if not stored:
        return tuple(decided)
    answers: list[Decided] = []
    for d in decided:
        commit = stored.get(d.command.command_id) if d.rejected else None
        if commit is not None:
            d = replayed(d.record, d.command, commit)
        elif d.appends and d.commit is not None and d.commit.rejected:
            # Those are not rejections after all: keep them out of the commit's record.
            kept = [r for r in d.commit.rejected if r.command_id not in stored]
            if len(kept) != len(d.commit.rejected):
                d = replace(d, commit=d.commit.model_copy(update={"rejected": kept}))
        answers.append(d)
    return tuple(answers)
