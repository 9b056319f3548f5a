"""The engine's batch processor on the in-memory store: validation, dedup, conflicts."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Collection, Iterator
from itertools import count
from typing import Any

import pytest
from pydantic import BaseModel, JsonValue

from schemas.commits import Commit
from schemas.outcomes import RejectionCode
from services.common.commit_log import commit_from_doc, commit_to_doc
from services.engine.domain import ExecutionState
from services.engine.memory_event_store import MemoryEventStore
from services.engine.processor import CommandProcessor, InboundRecord, StateCache
from tests.support.engine import command, record, start


@pytest.fixture
def store() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
def clock() -> Iterator[int]:
    return count(1_700_000_000_000_000_000, 1000)


def processor(store: MemoryEventStore, clock: Iterator[int]) -> CommandProcessor:
    return CommandProcessor(store, StateCache(1000), lambda: next(clock), max_record_bytes=4096)


async def test_valid_commands_become_commits_events_and_outcomes(store, clock) -> None:
    out = await processor(store, clock).process(
        [record(start("e1", "c1")), record(command("SignalExecution", "e1", "c2", name="go"))]
    )
    assert [c.seq for c in out.commits] == [1, 2]
    assert [e.type.value for e in out.events] == [
        "WORKFLOW_EXECUTION_STARTED",
        "WORKFLOW_EXECUTION_SIGNALED",
    ]
    assert [(o.command_id, o.accepted, o.seq) for o in out.outcomes] == [
        ("c1", True, 1),
        ("c2", True, 2),
    ]
    # Each command's clock reading, once: the outcome's decision time is its commit's.
    assert [o.decided_at for o in out.outcomes] == [c.committed_at for c in out.commits]
    assert out.commits[0].committed_at < out.commits[1].committed_at
    assert [t.kind for t in out.tasks] == ["run", "signal"]
    assert [c.seq async for c in store.read_stream("e1")] == [1, 2]


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"", "e1", "empty"),
        (b"{not json", "e1", "invalid_json"),
        (json.dumps(command("LaunchRocket", "e1", "c")).encode(), "e1", "unknown_type"),
        (json.dumps(command("StartWorkflow", "e1", "c")).encode(), "e1", "schema_violation"),
        (json.dumps(start("e/1", "c")).encode(), "e/1", "schema_violation"),
        (json.dumps(start("e1", "c")).encode(), "other", "key_mismatch"),
        (json.dumps(start("e1", "c")).encode(), None, "key_mismatch"),
        (b"{" + b" " * 5000 + b"}", "e1", "too_large"),
    ],
)
async def test_bad_records_go_to_dead_letters_and_the_rest_proceeds(
    store, clock, value: bytes, key: str | None, reason: str
) -> None:
    bad = InboundRecord(partition=0, offset=1, key=key.encode() if key else None, value=value)
    out = await processor(store, clock).process([bad, record(start("e2", "ok"))])
    assert [(d.reason, d.record.offset) for d in out.dead_letters] == [(reason, 1)]
    assert out.dead_letters[0].detail
    assert [o.command_id for o in out.outcomes] == ["ok"]
    assert await store.latest(["e1"]) == {}


async def test_rejection_is_an_outcome_not_a_commit(store, clock) -> None:
    out = await processor(store, clock).process([record(command("CancelExecution", "ghost", "c1"))])
    assert out.commits == []
    assert out.dead_letters == []
    (outcome,) = out.outcomes
    assert not outcome.accepted
    assert outcome.code is RejectionCode.EXECUTION_NOT_FOUND


async def test_redelivered_batch_republishes_stored_commits_without_deciding_again(
    store, clock
) -> None:
    batch = [
        record(command("CancelExecution", "e1", "early-cancel")),
        record(start("e1", "c1")),
        record(command("CancelExecution", "e1", "c2")),
        record(start("e1", "c3")),
    ]
    first = await processor(store, clock).process(batch)
    # A crash before the offset commit: a fresh engine (empty cache) sees the batch again.
    again = await processor(store, clock).process(batch)
    assert [c.model_dump() for c in again.commits] == [c.model_dump() for c in first.commits]
    assert [(o.command_id, o.accepted, o.code, o.seq) for o in again.outcomes] == [
        (o.command_id, o.accepted, o.code, o.seq) for o in first.outcomes
    ]
    assert [c.seq async for c in store.read_stream("e1")] == [1, 2, 3]


async def test_rejection_before_a_commit_is_answered_the_same_after_redelivery(
    store, clock
) -> None:
    # Rejected (no such execution), then the execution starts in the same batch. Deciding
    # the cancel again after a crash would wrongly cancel the new run.
    batch = [record(command("CancelExecution", "e1", "cancel")), record(start("e1", "s"))]
    await processor(store, clock).process(batch)
    again = await processor(store, clock).process(batch)
    cancel = again.outcomes[0]
    assert not cancel.accepted
    assert cancel.code is RejectionCode.EXECUTION_NOT_FOUND
    assert [c.command_type async for c in store.read_stream("e1")] == ["StartWorkflow"]


async def test_same_command_id_sent_twice_applies_once(store, clock) -> None:
    proc = processor(store, clock)
    await proc.process([record(start("e1", "c1"))])
    await proc.process([record(command("CancelExecution", "e1", "c2"))])
    # The producer re-sends c2 (new offset): same outcome, no second commit.
    out = await processor(store, clock).process([record(command("CancelExecution", "e1", "c2"))])
    assert [(o.command_id, o.accepted, o.seq) for o in out.outcomes] == [("c2", True, 2)]
    assert [c.seq async for c in store.read_stream("e1")] == [1, 2]


async def test_stale_cache_conflict_reloads_and_decides_again(store, clock) -> None:
    mine = processor(store, clock)
    await mine.process([record(start("e1", "c1"))])
    # Another engine instance (after a rebalance) appends seq 2 meanwhile.
    other = processor(store, clock)
    await other.process([record(command("SignalExecution", "e1", "theirs", name="x"))])
    out = await mine.process([record(command("SignalExecution", "e1", "mine", name="y"))])
    assert [(o.command_id, o.seq) for o in out.outcomes] == [("mine", 3)]
    assert [c.command_id async for c in store.read_stream("e1")] == ["c1", "theirs", "mine"]


async def test_commands_of_other_executions_after_a_conflict_are_still_applied(
    store, clock
) -> None:
    mine = processor(store, clock)
    await mine.process([record(start("e1", "c1"))])
    await processor(store, clock).process(
        [record(command("SignalExecution", "e1", "theirs", name="x"))]
    )
    out = await mine.process(
        [
            record(start("e0", "a")),
            record(command("SignalExecution", "e1", "mine", name="y")),
            record(start("e2", "b")),
        ]
    )
    assert sorted(o.command_id for o in out.outcomes) == ["a", "b", "mine"]
    assert all(o.accepted for o in out.outcomes)
    assert (await store.latest(["e0", "e2"])).keys() == {"e0", "e2"}


async def test_command_sent_twice_in_one_batch_gets_the_first_answer(store, clock) -> None:
    cancel = command("CancelExecution", "e1", "c2")
    out = await processor(store, clock).process(
        [record(start("e1", "c1")), record(cancel), record(cancel)]
    )
    assert [(o.command_id, o.accepted, o.seq) for o in out.outcomes] == [
        ("c1", True, 1),
        ("c2", True, 2),
        ("c2", True, 2),
    ]
    assert [c.seq async for c in store.read_stream("e1")] == [1, 2]


async def test_after_a_duplicate_the_next_command_continues_the_stream_without_a_gap(
    store, clock
) -> None:
    await processor(store, clock).process(
        [record(start("e1", "c1")), record(command("SignalExecution", "e1", "sig", name="a"))]
    )
    # A fresh engine sees the signal re-sent (new offset): it decides it, the append finds
    # the command id stored, and the stored commit is replayed.
    engine = processor(store, clock)
    replay = await engine.process([record(command("SignalExecution", "e1", "sig", name="a"))])
    assert [(o.command_id, o.seq) for o in replay.outcomes] == [("sig", 2)]
    after = await engine.process([record(command("SignalExecution", "e1", "next", name="b"))])
    assert [(o.command_id, o.seq) for o in after.outcomes] == [("next", 3)]
    assert [c.seq async for c in store.read_stream("e1")] == [1, 2, 3]


class CountingStore(MemoryEventStore):
    """Counts the reads the processor makes before deciding."""

    def __init__(self) -> None:
        super().__init__()
        self.latest_reads: list[str] = []

    async def latest(self, execution_ids: Collection[str]) -> dict[str, Commit]:
        self.latest_reads.extend(execution_ids)
        return await super().latest(execution_ids)


async def test_starts_of_unseen_executions_are_decided_without_a_read(clock) -> None:
    store = CountingStore()
    out = await processor(store, clock).process(
        [
            record(start("n1", "a")),
            record(command("SignalExecution", "n1", "b", name="go")),
            record(start("n2", "c")),
            record(command("SignalExecution", "ghost", "d", name="go")),
        ]
    )
    assert store.latest_reads == ["ghost"]  # only the execution whose first command is not a start
    assert [(o.command_id, o.accepted, o.seq) for o in out.outcomes] == [
        ("a", True, 1),
        ("b", True, 2),
        ("c", True, 1),
        ("d", False, None),
    ]
    assert [c.command_id async for c in store.read_stream("n1")] == ["a", "b"]


async def test_redelivered_starts_are_replayed_not_applied_again(store, clock) -> None:
    batch = [
        record(start("e1", "s1")),
        record(command("SignalExecution", "e1", "g1", name="x")),
        record(start("e2", "s2")),
        record(start("e3", "s3")),
    ]
    first = await processor(store, clock).process(batch)
    # A crash before the offset commit: a fresh engine assumes the starts are new; the
    # store refuses them and the stored commits are re-published instead.
    again = await processor(store, clock).process(batch)
    assert sorted(c.doc_id for c in again.commits) == sorted(c.doc_id for c in first.commits)
    assert [c.model_dump() for c in sorted(again.commits, key=lambda c: c.doc_id)] == [
        c.model_dump() for c in sorted(first.commits, key=lambda c: c.doc_id)
    ]
    assert sorted((o.command_id, o.seq) for o in again.outcomes) == sorted(
        (o.command_id, o.seq) for o in first.outcomes
    )
    for execution_id, length in (("e1", 2), ("e2", 1), ("e3", 1)):
        assert [c.seq async for c in store.read_stream(execution_id)] == list(range(1, length + 1))


async def test_start_of_an_execution_that_exists_is_decided_against_its_state(store, clock) -> None:
    await processor(store, clock).process(
        [record(start("running", "r1")), record(start("closed", "c1"))]
    )
    await processor(store, clock).process([record(command("CancelExecution", "closed", "c2"))])
    out = await processor(store, clock).process(
        [record(start("running", "r2")), record(start("closed", "c3"))]
    )
    by_id = {o.command_id: o for o in out.outcomes}
    assert not by_id["r2"].accepted
    assert by_id["r2"].code is RejectionCode.EXECUTION_ALREADY_RUNNING
    # A closed execution id is reused (the documented default policy): a new run at seq 3.
    assert by_id["c3"].accepted and by_id["c3"].seq == 3
    assert [c.command_id async for c in store.read_stream("running")] == ["r1"]


async def test_start_claimed_before_a_conflict_is_published_once(store, clock) -> None:
    mine = processor(store, clock)
    await mine.process([record(start("e1", "c1"))])
    await processor(store, clock).process(
        [record(command("SignalExecution", "e1", "theirs", name="x"))]
    )
    # e2's start goes in first (assumed new); e1's signal then conflicts (stale cache).
    out = await mine.process(
        [record(command("SignalExecution", "e1", "mine", name="y")), record(start("e2", "s2"))]
    )
    assert sorted((o.command_id, o.seq) for o in out.outcomes) == [("mine", 3), ("s2", 1)]
    assert sorted(c.doc_id for c in out.commits) == ["e1:000000000003", "e2:000000000001"]
    assert [c.command_id async for c in store.read_stream("e2")] == ["s2"]


async def test_stored_commits_leave_out_absent_fields_and_read_back_equal(store, clock) -> None:
    out = await processor(store, clock).process(
        [
            record(
                command(
                    "StartWorkflow",
                    "e1",
                    "c1",
                    workflow_name="wf",
                    # A null inside user data is data: it must survive.
                    input={"keep": None, "list": [None, 1]},
                )
            ),
            record(command("SignalExecution", "e1", "c2", name="go", input=None)),
            record(command("CancelExecution", "e1", "c3")),
            record(command("SignalExecution", "e1", "c4", name="late")),  # rejected
            record(start("e1", "c5")),  # starts again: a second run
        ]
    )
    assert [c.seq for c in out.commits] == [1, 2, 3, 4]
    for commit in out.commits:
        doc = commit_to_doc(commit)
        assert commit_from_doc(doc) == commit
        body = json.loads(doc["body"])
        # Fields that are absent (None) are not written: they read back as their default.
        assert "parent_execution_id" not in body["events"][0]
        assert "closed_at_ns" not in body["state"] or body["state"]["closed_at_ns"] is not None
    started = json.loads(commit_to_doc(out.commits[0])["body"])["events"][0]
    assert started["attributes"]["input"]["value"] == {"keep": None, "list": [None, 1]}
    assert [r.command_id for r in out.commits[3].rejected] == ["c4"]


def _models(root: Any, seen: set[type[BaseModel]]) -> None:
    """Every pydantic model reachable through `root`'s annotations."""
    if typing.get_origin(root) is not None:
        for arg in typing.get_args(root):
            _models(arg, seen)
    elif isinstance(root, type) and issubclass(root, BaseModel) and root not in seen:
        seen.add(root)
        for model_field in root.model_fields.values():
            _models(model_field.annotation, seen)
    else:
        for arg in typing.get_args(root):  # unions, Annotated
            _models(arg, seen)


def test_every_field_that_may_be_none_in_a_commit_defaults_to_none() -> None:
    # Commits are stored without their None fields: each must read back as None.
    seen: set[type[BaseModel]] = set()
    _models(Commit, seen)
    _models(ExecutionState, seen)
    assert len(seen) > 20  # the events, their attributes, the state and its parts
    wrong = [
        f"{model.__name__}.{name}"
        for model in seen
        for name, f in model.model_fields.items()
        if _accepts_none(f.annotation)
        and (f.is_required() or f.get_default(call_default_factory=True) is not None)
    ]
    assert wrong == []


def _accepts_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None) or annotation in (Any, JsonValue):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_accepts_none(a) for a in typing.get_args(annotation))
    return False


# --- the worker protocol --------------------------------------------------------------


async def test_workflow_task_inputs_become_run_tasks_routed_by_the_runs_deployment(
    store, clock
) -> None:
    p = processor(store, clock)
    body = start("w1", "s1")
    body["payload"]["deployment_name"] = "blue"
    out = await p.process([record(body)])
    run_id = out.commits[0].run_id
    timer = {"kind": "start_timer", "timer_id": "t", "duration_seconds": 1}
    out = await p.process(
        [
            record(
                command(
                    "CompleteWorkflowTask", "w1", "wt1", run_id=run_id, task_seq=1, steps=[timer]
                )
            ),
            record(command("SignalExecution", "w1", "sig", name="go")),
            record(command("FireTimer", "w1", "f1", run_id=run_id, timer_id="t")),
        ]
    )
    assert [(t.kind, t.seq, t.deployment_name) for t in out.tasks] == [
        ("signal", 3, "blue"),
        ("run", 4, "blue"),
    ]


async def test_a_child_start_and_its_refusal_reach_the_parent_as_derived_commands(
    store, clock
) -> None:
    p = processor(store, clock)
    out = await p.process([record(start("kid", "k0")), record(start("mom", "m0"))])
    mom_run = out.commits[1].run_id
    child = {"kind": "start_child", "child_execution_id": "kid", "workflow_name": "wf"}
    out = await p.process(
        [
            record(
                command(
                    "CompleteWorkflowTask", "mom", "wt", run_id=mom_run, task_seq=1, steps=[child]
                )
            )
        ]
    )
    (child_start,) = out.follow_ups
    assert child_start.type == "StartWorkflow" and child_start.execution_id == "kid"
    # "kid" is still running: its start is refused, and the parent hears of it.
    out = await p.process([record(json.loads(child_start.model_dump_json()))])
    assert out.outcomes[0].code is RejectionCode.EXECUTION_ALREADY_RUNNING
    (report,) = out.follow_ups
    assert report.type == "RecordChildWorkflow" and report.execution_id == "mom"
    assert report.command_id == f"{child_start.command_id}:start-failed"
    out = await p.process([record(json.loads(report.model_dump_json()))])
    assert [e.type.value for e in out.events] == ["CHILD_WORKFLOW_START_FAILED"]
    assert [t.kind for t in out.tasks] == ["run"]


async def test_a_continue_as_new_step_hands_over_to_a_derived_successor(store, clock) -> None:
    p = processor(store, clock)
    out = await p.process([record(start("can", "c0"))])
    run_id = out.commits[0].run_id
    step = {"kind": "continue_as_new", "input": {"page": 2}}
    task = command("CompleteWorkflowTask", "can", "wt", run_id=run_id, task_seq=1, steps=[step])
    out = await p.process([record(task)])
    assert out.events[-1].type.value == "WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
    (successor,) = out.follow_ups
    assert successor.type == "StartWorkflow"
    assert successor.execution_id not in ("", "can")
    assert successor.payload.input == {"page": 2}
    assert successor.payload.continued_from_execution_id == "can"


async def test_tasks_carry_what_their_events_have_and_none_of_what_they_lack(store, clock) -> None:
    out = await processor(store, clock).process(
        [
            record(start("e1", "c1")),
            record(command("SignalExecution", "e1", "c2", name="go", input={"v": 2})),
            record(command("CancelExecution", "e1", "c3", reason="done")),
        ]
    )
    run, signal, cancel = out.tasks
    assert (run.kind, run.attempt, run.signal_name) == ("run", 1, None)
    assert (signal.kind, signal.signal_name, signal.input, signal.attempt) == (
        "signal",
        "go",
        {"v": 2},
        1,
    )
    # A canceled run's attributes have no input and no signal name.
    assert (cancel.kind, cancel.input, cancel.signal_name) == ("stop", None, None)
