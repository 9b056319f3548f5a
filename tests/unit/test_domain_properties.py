"""Invariants of the domain over random command sequences (hypothesis).

A small world of executions receives random commands of every type: run ids are
sometimes stale or unknown, reset points sometimes out of range, retry attempts
sometimes wrong, continue-as-new successors are started as the engine would. After
every command the streams must still satisfy what subscribers and projections rely on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from schemas.commands import (
    COMMAND_ADAPTER,
    ActivityReportPayload,
    CancelExecution,
    Command,
    CompleteExecution,
    CompletePayload,
    CompleteWorkflowTask,
    CompleteWorkflowTaskPayload,
    ContinueAsNew,
    ContinueAsNewPayload,
    CustomTaskReportPayload,
    FailExecution,
    FailPayload,
    FailWorkflowTask,
    FailWorkflowTaskPayload,
    FireTimer,
    FireTimerPayload,
    IdReusePolicy,
    ReasonPayload,
    RecordActivityTask,
    RecordCustomTask,
    ResetExecution,
    ResetPayload,
    RetryExecution,
    SignalExecution,
    SignalPayload,
    StartWorkflow,
    StartWorkflowPayload,
    TerminateExecution,
    TimeOutExecution,
    TimerPayload,
)
from schemas.common import ExecutionStatus, Failure, RetryPolicy
from schemas.events import STATUS_AFTER, Event, EventType, event_id_for
from services.engine.domain import (
    Context,
    ExecutionState,
    Rejected,
    decide,
    fold,
    successor_commands,
)
from services.engine.workflow_tasks import derived_commands, start_failed_report

T0 = 1_700_000_000_000_000_000
ISSUED = datetime(2024, 1, 1, tzinfo=UTC)
ROOTS = ("exec-a", "exec-b")
KINDS = (
    "start",
    "cancel",
    "terminate",
    "signal",
    "reset",
    "complete",
    "fail",
    "continue_as_new",
    "activity",
    "custom_task",
    "time_out",
    "retry",
    "workflow_task",
    "fail_task",
    "fire_timer",
)
ACTIVITY_STAGES = ("started", "completed", "retrying", "failed")
CUSTOM_STAGES = ("started", "in_progress", "completed", "failed", "timed_out", "canceled")
POLICIES = tuple(IdReusePolicy)
TERMINAL_TYPES = frozenset(t for t, s in STATUS_AFTER.items() if s.is_terminal)


@dataclass(frozen=True)
class Op:
    """One random command, described by choices the world turns into a real command."""

    kind: str
    target: int
    run_choice: int
    number: int
    flag: bool
    other_flag: bool


# Worker reports and timers are weighted up: they only get past the guards when they
# name the latest run of a live execution, so they need more tries.
WEIGHTED_KINDS = (
    *KINDS,
    "start",
    "complete",
    "fail",
    "fail",
    "retry",
    "retry",
    "reset",
    "workflow_task",
    "workflow_task",
    "workflow_task",
    "fire_timer",
)

ops = st.builds(
    Op,
    kind=st.sampled_from(WEIGHTED_KINDS),
    target=st.integers(0, 5),
    run_choice=st.integers(0, 9),
    number=st.integers(0, 12),
    flag=st.booleans(),
    other_flag=st.booleans(),
)


@dataclass
class World:
    """Every stream the commands produced, kept the way the engine would store them."""

    streams: dict[str, list[Event]] = field(default_factory=dict)
    states: dict[str, ExecutionState] = field(default_factory=dict)
    tick: int = 0
    commands: int = 0

    @property
    def known_ids(self) -> list[str]:
        return list(ROOTS) + sorted(set(self.streams) - set(ROOTS))

    def ctx(self, execution_id: str, cmd: Command) -> Context:
        self.tick += 1
        state = self.states.get(execution_id)
        history: tuple[Event, ...] = ()
        if isinstance(cmd, ResetExecution) and state is not None:
            history = tuple(e for e in self.streams[execution_id] if e.run_id == state.run_id)
        return Context(
            now_ns=T0 + self.tick * 1_000,
            new_run_id=f"r{self.tick}",
            new_execution_id=f"x{self.tick}",
            successor_run_id=f"s{self.tick}",
            history=history,
        )

    def apply(self, cmd: Command) -> None:
        execution_id = cmd.execution_id
        before = self.states.get(execution_id)
        snapshot = before.model_dump_json() if before else None
        ctx = self.ctx(execution_id, cmd)
        history = list(ctx.history)
        decided = _decide(before, cmd, ctx)
        # decide is pure: it leaves its inputs as they were, accepted or not.
        assert (before.model_dump_json() if before else None) == snapshot
        assert list(ctx.history) == history
        same_state, same_cmd = _clone(before, cmd)
        again = _decide(same_state, same_cmd, ctx)
        if isinstance(decided, Rejected):
            # Rejected commands change nothing: no events to append, the state stays.
            event(f"rejected {cmd.type}: {decided.code.value}")
            assert isinstance(again, Rejected), "decide is deterministic"
            assert (again.code, again.message) == (decided.code, decided.message)
            assert decided.message
            if isinstance(cmd, StartWorkflow):
                # A child's refused start reaches its parent, as the engine derives it.
                report = start_failed_report(cmd, decided)
                if report is not None:
                    self.apply(report)
            return
        event(f"accepted {cmd.type}")
        assert again == decided, "decide is deterministic"
        _assert_commit_stamps(before, cmd, ctx, decided)
        after = fold(decided, before)
        assert after is not None
        self.streams.setdefault(execution_id, []).extend(decided)
        self.states[execution_id] = after
        follow_ups = successor_commands(decided, ctx, after) + derived_commands(decided, ctx, after)
        assert follow_ups == successor_commands(decided, ctx, after) + derived_commands(
            decided, ctx, after
        ), "derived commands are deterministic"
        for follow_up in follow_ups:
            self.apply(follow_up)

    # --- building commands from random choices ---------------------------------------

    def command(self, op: Op) -> Command:
        ids = self.known_ids
        if op.kind == "retry" and op.run_choice < 7:
            # Retry timers fire for executions with a retry pending, like the timers service.
            ids = [i for i in ids if self._retrying(i)] or ids
        execution_id = ids[op.target % len(ids)]
        self.commands += 1
        envelope: dict[str, Any] = {
            "command_id": f"c{self.commands}",
            "execution_id": execution_id,
            "issued_at": ISSUED,
            "user_id": "u" if op.flag else None,
        }
        return _BUILDERS[op.kind](self, op, envelope)

    def _retrying(self, execution_id: str) -> bool:
        state = self.states.get(execution_id)
        return state is not None and state.status is ExecutionStatus.RETRYING_AFTER_ERROR

    def run_id(self, op: Op, execution_id: str) -> str:
        state = self.states.get(execution_id)
        if state is None or op.run_choice == 9:
            return "no-such-run"
        if op.run_choice >= 7:
            runs = sorted({e.run_id for e in self.streams[execution_id]})
            return runs[op.number % len(runs)]
        return state.run_id


def _start(world: World, op: Op, env: dict[str, Any]) -> Command:
    policy = None if op.number % 4 == 0 else RetryPolicy(max_attempts=1 + op.number % 3)
    return StartWorkflow(
        **env,
        payload=StartWorkflowPayload(
            workflow_name=f"wf{op.number % 2}",
            input={"n": op.number},
            retry_policy=policy,
            id_reuse_policy=POLICIES[op.run_choice % len(POLICIES)],
            execution_timeout_seconds=10.0 if op.other_flag else None,
            parent_execution_id="parent" if op.number == 12 else None,
        ),
    )


def _reset(world: World, op: Op, env: dict[str, Any]) -> Command:
    state = world.states.get(env["execution_id"])
    size = state.run_event_count if state else 1
    point = 1 + op.number % (size + 2)  # sometimes past the end
    return ResetExecution(
        **env,
        payload=ResetPayload(
            event_id=point, reason=None, exclude_signals=op.flag, exclude_updates=op.other_flag
        ),
    )


def _continue_as_new(world: World, op: Op, env: dict[str, Any]) -> Command:
    ids = world.known_ids
    target = None if op.flag else ids[op.number % len(ids)]  # sometimes itself
    return ContinueAsNew(
        **env,
        payload=ContinueAsNewPayload(
            run_id=world.run_id(op, env["execution_id"]),
            input=[op.number],
            workflow_name="wf-next" if op.other_flag else None,
            new_execution_id=target,
        ),
    )


def _retry(world: World, op: Op, env: dict[str, Any]) -> Command:
    state = world.states.get(env["execution_id"])
    # Mostly the attempt that is due; sometimes none, a repeat, or one too far.
    offsets: dict[int, int | None] = {0: None, 1: 0, 2: 2}
    offset = offsets.get(op.number, 1)
    attempt = None if offset is None else (state.attempt if state else 1) + offset
    return RetryExecution(
        **env, payload=TimerPayload(run_id=world.run_id(op, env["execution_id"]), attempt=attempt)
    )


def _report(world: World, op: Op, env: dict[str, Any]) -> Command:
    run_id = world.run_id(op, env["execution_id"])
    failure = Failure(message=f"failure {op.number}")
    if op.kind == "complete":
        return CompleteExecution(**env, payload=CompletePayload(run_id=run_id, result=op.number))
    if op.kind == "fail":
        return FailExecution(
            **env, payload=FailPayload(run_id=run_id, failure=failure, retryable=op.number != 7)
        )
    if op.kind == "activity":
        return RecordActivityTask(
            **env,
            payload=ActivityReportPayload(
                run_id=run_id,
                stage=ACTIVITY_STAGES[op.number % 4],  # type: ignore[arg-type]
                task_id=f"a{op.number}",
                activity_name="act",
                failure=failure,
            ),
        )
    if op.kind == "custom_task":
        return RecordCustomTask(
            **env,
            payload=CustomTaskReportPayload(
                run_id=run_id,
                stage=CUSTOM_STAGES[op.number % 6],  # type: ignore[arg-type]
                custom_task_id=f"t{op.number}",
                custom_task_type="review",
                failure=failure,
            ),
        )
    return TimeOutExecution(**env, payload=TimerPayload(run_id=run_id))


def _workflow_task_steps(op: Op) -> list[dict[str, Any]]:
    n = op.number
    activity = {"kind": "activity", "activity_id": f"a{n % 3}", "activity_name": "act"}
    policies = ("terminate", "request_cancel", "abandon")
    choices: list[list[dict[str, Any]]] = [
        [{**activity, "stage": "started"}, {**activity, "stage": "completed", "result": n}],
        [{"kind": "start_timer", "timer_id": f"t{n % 3}", "duration_seconds": n}],
        [
            {
                "kind": "start_child",
                "child_execution_id": f"kid{n % 4}",
                "workflow_name": "child",
                "parent_close_policy": policies[op.run_choice % 3],
            }
        ],
        [{"kind": "complete", "result": n}],
        [{"kind": "cancel_timer", "timer_id": f"t{n % 3}"}],
        [
            {"kind": "marker", "marker_id": "m", "name": "side_effect", "value": n},
            {"kind": "fail", "failure": {"message": "x"}, "retryable": op.flag},
        ],
        [{"kind": "cancel", "reason": "asked"}],
        [
            {"kind": "update_accepted", "update_id": f"u{n}", "update_name": "u"},
            {"kind": "update_completed", "update_id": f"u{n}", "result": n},
        ],
        [{"kind": "continue_as_new", "input": n}],
        [],
    ]
    return choices[n % len(choices)]


def _worker_protocol(world: World, op: Op, env: dict[str, Any]) -> Command:
    execution_id = env["execution_id"]
    state = world.states.get(execution_id)
    run_id = world.run_id(op, execution_id)
    seq = state.seq if state else 1
    # Mostly the latest view; sometimes an older one (stale) or one past the end.
    task_seq = max(1, seq - op.run_choice % 3) if op.run_choice != 6 else seq + 1
    if op.kind == "fire_timer":
        pending = sorted(state.timers) if state else []
        timer_id = pending[op.number % len(pending)] if pending and op.flag else f"t{op.number % 3}"
        return FireTimer(**env, payload=FireTimerPayload(run_id=run_id, timer_id=timer_id))
    if op.kind == "fail_task":
        return FailWorkflowTask(
            **env,
            payload=FailWorkflowTaskPayload(
                run_id=run_id, task_seq=task_seq, failure=Failure(message="nondeterminism")
            ),
        )
    return CompleteWorkflowTask(
        **env,
        payload=CompleteWorkflowTaskPayload.model_validate(
            {"run_id": run_id, "task_seq": task_seq, "steps": _workflow_task_steps(op)}
        ),
    )


_BUILDERS: dict[str, Callable[[World, Op, dict[str, Any]], Command]] = {
    "start": _start,
    "cancel": lambda w, op, env: CancelExecution(**env, payload=ReasonPayload(reason="r")),
    "terminate": lambda w, op, env: TerminateExecution(**env),
    "signal": lambda w, op, env: SignalExecution(
        **env, payload=SignalPayload(name=f"sig{op.number}", input=op.number)
    ),
    "reset": _reset,
    "complete": _report,
    "fail": _report,
    "continue_as_new": _continue_as_new,
    "activity": _report,
    "custom_task": _report,
    "time_out": _report,
    "retry": _retry,
    "workflow_task": _worker_protocol,
    "fail_task": _worker_protocol,
    "fire_timer": _worker_protocol,
}


# --- per-commit checks ------------------------------------------------------------------


def _clone(state: ExecutionState | None, cmd: Command) -> tuple[ExecutionState | None, Command]:
    """Equal but not identical inputs, as a reload from storage would give."""
    same_state = (
        None if state is None else ExecutionState.model_validate_json(state.model_dump_json())
    )
    same_cmd = COMMAND_ADAPTER.validate_json(COMMAND_ADAPTER.dump_json(cmd))
    return same_state, same_cmd


def _decide(state: ExecutionState | None, cmd: Command, ctx: Context) -> list[Event] | Rejected:
    """decide, with the rejection as a value so both outcomes can be compared."""
    try:
        return decide(state, cmd, ctx)
    except Rejected as rejection:
        return rejection


def _assert_commit_stamps(
    state: ExecutionState | None, cmd: Command, ctx: Context, events: list[Event]
) -> None:
    assert events, "an accepted command yields at least one event"
    seq = state.seq + 1 if state else 1
    for index, stamped in enumerate(events):
        assert (stamped.seq, stamped.index) == (seq, index)
        assert stamped.event_id == event_id_for(cmd.execution_id, seq, index)
        assert stamped.execution_id == cmd.execution_id
        assert stamped.command_id == cmd.command_id
        assert stamped.timestamp_ns == ctx.now_ns


# --- whole-stream invariants ------------------------------------------------------------


def _assert_stream_invariants(
    execution_id: str, events: list[Event], state: ExecutionState
) -> None:
    seqs = [seq for seq, _ in groupby(e.seq for e in events)]
    assert seqs == list(range(1, len(seqs) + 1)), "seq contiguous from 1"
    for _, group in groupby(events, key=lambda e: e.seq):
        commit = list(group)
        assert [e.index for e in commit] == list(range(len(commit))), "index contiguous"

    runs = [run for run, _ in groupby(e.run_id for e in events)]
    assert len(runs) == len(set(runs)), "a run's events are contiguous; a closed run stays closed"
    assert runs[-1] == state.run_id
    assert len(runs) == state.run_count
    for run in runs:
        history = [e for e in events if e.run_id == run]
        assert [e.event_number for e in history] == list(range(1, len(history) + 1))
        terminal = [i for i, e in enumerate(history) if e.type in TERMINAL_TYPES]
        assert len(terminal) <= 1, "at most one terminal event per run"
        if terminal:
            assert terminal[0] == len(history) - 1, "nothing follows a run's terminal event"
        elif run != state.run_id:
            raise AssertionError(f"run {run} was left open by a newer run")
        starts = [e for e in history if e.type is EventType.WORKFLOW_EXECUTION_STARTED]
        assert len(starts) == 1
        assert history[0].type in (
            EventType.WORKFLOW_EXECUTION_STARTED,
            EventType.WORKFLOW_RUN_RESET,
        )

    latest = [e for e in events if e.run_id == state.run_id]
    assert state.run_event_count == len(latest)
    assert state.seq == seqs[-1]
    changes = [STATUS_AFTER[e.type] for e in latest if e.type in STATUS_AFTER]
    assert state.status is changes[-1]
    assert state.execution_id == execution_id

    # Determinism of the fold: the whole stream folds to the state built commit by commit,
    # and that state survives the engine's JSON snapshot.
    assert fold(events) == state
    assert ExecutionState.model_validate(state.model_dump(mode="json")) == state
    # The worker protocol's bookkeeping follows the run.
    if state.workflow_task_seq is not None:
        assert state.workflow_task_seq <= state.seq
    if state.cancel_deadline_ns is not None and state.is_open:
        assert state.timers.get("cancel-deadline") == state.cancel_deadline_ns


def _start_roots(world: World) -> None:
    for root in ROOTS:
        world.apply(
            StartWorkflow(
                command_id=f"start-{root}",
                execution_id=root,
                issued_at=ISSUED,
                payload=StartWorkflowPayload(
                    workflow_name="wf", retry_policy=RetryPolicy(max_attempts=3)
                ),
            )
        )


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(prestarted=st.booleans(), sequence=st.lists(ops, min_size=10, max_size=60))
def test_random_command_sequences_keep_every_stream_consistent(
    prestarted: bool, sequence: list[Op]
) -> None:
    world = World()
    if prestarted:
        # Most commands then land on a live execution instead of an unknown one.
        _start_roots(world)
    for op in sequence:
        world.apply(world.command(op))
        for execution_id, events in world.streams.items():
            _assert_stream_invariants(execution_id, events, world.states[execution_id])
    for execution_id, events in world.streams.items():
        state = world.states[execution_id]
        closed_runs = {e.run_id for e in events if e.type in TERMINAL_TYPES}
        open_runs = {e.run_id for e in events} - closed_runs
        assert open_runs <= {state.run_id}, "at most one open run: the latest"
        assert (state.run_id in open_runs) == (
            state.status in (ExecutionStatus.RUNNING, ExecutionStatus.RETRYING_AFTER_ERROR)
        )
