"""The engine's pure output builders, without a store or a broker: the context a command
is decided in, the outcome it answers, the tasks a commit calls for."""

from __future__ import annotations

from schemas.common import ExecutionStatus
from schemas.outcomes import RejectionCode
from services.common.ids import derived_id
from services.engine.context import context_for
from services.engine.domain import Rejected, fold
from services.engine.outcomes import accepted, after_rejection, not_reapplied, rejected
from services.engine.tasks import tasks_for
from tests.support.engine import T0, started_commit
from tests.support.engine import parsed_command as command


def test_ids_in_a_context_derive_from_the_command_id() -> None:
    start = command("StartWorkflow", "c1", workflow_name="wf")
    ctx = context_for(start, T0)
    assert ctx.new_run_id == derived_id("c1", "run") and ctx == context_for(start, T0)
    assert ctx.new_execution_id == "" and ctx.successor_run_id == ""
    signal = context_for(command("SignalExecution", "c2", name="go"), T0)
    assert signal.new_run_id == "" and signal.now_ns == T0


def test_a_continue_as_new_gets_its_successors_ids() -> None:
    ctx = context_for(command("ContinueAsNew", "c3", run_id="r1"), T0)
    assert ctx.new_execution_id == derived_id("c3", "execution")
    assert ctx.successor_run_id == derived_id("c3", "successor-run")


def test_a_start_calls_for_one_run_task_routed_by_its_deployment() -> None:
    commit = started_commit(deployment_name="blue")
    [task] = tasks_for(commit)
    assert (task.kind, task.execution_id, task.seq) == ("run", "e1", 1)
    assert task.deployment_name == "blue" and task.input == {"n": 1}
    assert task.task_id == commit.events[0].event_id  # derived: a replay gives the same


def test_outcomes_say_what_was_decided() -> None:
    commit = started_commit()
    start = command("StartWorkflow", "c1", workflow_name="wf")
    state = fold(commit.events, None)
    assert state is not None
    ok = accepted(start, commit, state, commit.committed_at)
    assert (ok.accepted, ok.seq, ok.run_id, ok.status) == (
        True,
        1,
        commit.run_id,
        ExecutionStatus.RUNNING,
    )
    assert ok.decided_at == commit.committed_at
    refusal = Rejected(RejectionCode.EXECUTION_ALREADY_RUNNING, "running")
    no = rejected(start, refusal, T0)
    assert (no.accepted, no.code, no.message) == (False, refusal.code, "running")
    again = not_reapplied(start, T0)
    assert again.accepted is False and again.code is RejectionCode.INVALID_TRANSITION


def test_only_a_childs_refused_start_reaches_its_parent() -> None:
    refusal = Rejected(RejectionCode.EXECUTION_ALREADY_RUNNING, "running")
    assert after_rejection(command("StartWorkflow", "c1", workflow_name="wf"), refusal) == []
    child = command(
        "StartWorkflow", "c4", workflow_name="wf", parent_execution_id="p1", parent_run_id="r1"
    )
    [report] = after_rejection(child, refusal)
    assert report.execution_id == "p1" and report.command_id == "c4:start-failed"
