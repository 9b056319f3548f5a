"""A workload of real engine events: commands run through the domain's `decide`/`fold`,
so the commits and events are the ones the engine would store and publish. Shared by the
projection, projector, parking and run-reader tests."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.commands import (
    CancelExecution,
    Command,
    CompleteExecution,
    CompletePayload,
    ContinueAsNew,
    ContinueAsNewPayload,
    FailExecution,
    FailPayload,
    ReasonPayload,
    ResetExecution,
    ResetPayload,
    SignalExecution,
    SignalPayload,
    StartWorkflow,
    StartWorkflowPayload,
    TerminateExecution,
)
from schemas.commits import Commit
from schemas.common import Failure
from schemas.events import Event
from services.common.readmodels.history_chunks import head_docs
from services.common.readmodels.projection import Document, ReadModelDocs, project
from services.engine.domain import Context, ExecutionState, decide, fold, successor_commands
from services.engine.mongo_event_store import MongoEventStore

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


class Workload:
    """Executions grown by `decide` + `fold`, as the engine grows them; keeps every commit."""

    def __init__(self) -> None:
        self.states: dict[str, ExecutionState] = {}
        self.events: dict[str, list[Event]] = {}
        self.commits: list[Commit] = []
        self._n = itertools.count(1)

    def run(self, cmd: Command) -> Commit:
        n = next(self._n)
        state = self.states.get(cmd.execution_id)
        history = tuple(
            e for e in self.events.get(cmd.execution_id, []) if state and e.run_id == state.run_id
        )
        ctx = Context(
            now_ns=T0 + n * 7 * MS + n,  # sub-millisecond parts on purpose
            new_run_id=f"run-{cmd.command_id}",
            new_execution_id=f"next-{cmd.command_id}",
            successor_run_id=f"succ-{cmd.command_id}",
            history=history,
        )
        events = decide(state, cmd, ctx)
        state = fold(events, state)
        assert state is not None
        self.states[cmd.execution_id] = state
        self.events.setdefault(cmd.execution_id, []).extend(events)
        commit = Commit(
            execution_id=cmd.execution_id,
            seq=events[0].seq,
            command_id=cmd.command_id,
            command_type=cmd.type,
            run_id=events[-1].run_id,
            events=events,
            committed_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
            state=state.model_dump(mode="json"),
        )
        self.commits.append(commit)
        for follow_up in successor_commands(events, ctx, state):
            self.run(follow_up)
        return commit

    def run_id(self, execution_id: str) -> str:
        return self.states[execution_id].run_id

    def all_events(self) -> list[Event]:
        return [e for c in self.commits for e in c.events]

    # command builders ----------------------------------------------------------------

    def _env(self, execution_id: str, user: str | None = "alice") -> dict[str, Any]:
        return {
            "command_id": f"c{next(self._n)}-{execution_id}",
            "execution_id": execution_id,
            "issued_at": datetime(2024, 1, 1, tzinfo=UTC),
            "user_id": user,
        }

    def start(self, execution_id: str, workflow: str = "order", **payload: Any) -> Commit:
        user = payload.pop("user_id", "alice")
        return self.run(
            StartWorkflow(
                **self._env(execution_id, user),
                payload=StartWorkflowPayload(workflow_name=workflow, **payload),
            )
        )

    def complete(self, execution_id: str, result: Any = None) -> Commit:
        return self.run(
            CompleteExecution(
                **self._env(execution_id, None),
                payload=CompletePayload(run_id=self.run_id(execution_id), result=result),
            )
        )

    def fail(self, execution_id: str) -> Commit:
        return self.run(
            FailExecution(
                **self._env(execution_id, None),
                payload=FailPayload(
                    run_id=self.run_id(execution_id),
                    failure=Failure(message="boom"),
                    retryable=False,
                ),
            )
        )

    def cancel(self, execution_id: str) -> Commit:
        return self.run(
            CancelExecution(**self._env(execution_id), payload=ReasonPayload(reason="stop"))
        )

    def terminate(self, execution_id: str) -> Commit:
        return self.run(TerminateExecution(**self._env(execution_id), payload=ReasonPayload()))

    def signal(self, execution_id: str, name: str = "poke") -> Commit:
        return self.run(
            SignalExecution(**self._env(execution_id), payload=SignalPayload(name=name, input=1))
        )

    def signals(self, execution_id: str, count: int) -> None:
        """`count` signals in a row (named "poke")."""
        for _ in range(count):
            self.signal(execution_id)

    def reset(self, execution_id: str, event_id: int = 1) -> Commit:
        return self.run(
            ResetExecution(**self._env(execution_id), payload=ResetPayload(event_id=event_id))
        )

    def continue_as_new(self, execution_id: str) -> Commit:
        return self.run(
            ContinueAsNew(
                **self._env(execution_id, None),
                payload=ContinueAsNewPayload(run_id=self.run_id(execution_id), input={"n": 2}),
            )
        )


def mixed_workload() -> Workload:
    """Every kind of run life: running, completed, failed, canceled, terminated, reset,
    continued-as-new, signalled, children, a re-started execution id."""
    w = Workload()
    w.start("a", display_name="Nightly A", deployment_name="prod", user_id="bob")
    w.signal("a")
    w.complete("a", result={"ok": True})
    w.start("b", internal=True)
    w.fail("b")
    w.start("c", parent_execution_id="a", root_execution_id="a")
    w.cancel("c")
    w.start("d", search_keys={"order": "O-17", "note": None}, workflow_tags=["billing"])
    w.signal("d")
    w.reset("d")
    w.start("e", search_keys={"customer": "ACME"}, workflow_tags=["nightly", "eu", "nightly"])
    w.continue_as_new("e")
    w.start("f")
    w.terminate("f")
    w.start("f")  # a second run under the same execution id
    w.start("g")
    return w


def fold_all(events: Sequence[Event], docs: ReadModelDocs | None = None) -> ReadModelDocs:
    return project(events, docs or ReadModelDocs())


def all_chunks(history: Mapping[str, Document], runs: Mapping[str, Document]) -> dict[str, Any]:
    """Every history document by `_id`, with the run rows' heads as the chunk 0 documents
    they stand for (what the layout before heads stored)."""
    out: dict[str, Any] = dict(history)
    for run in runs.values():
        out.update(head_docs(run))
    return out


async def store_commits(db: Any, w: Workload) -> None:
    """Store the workload's commits the way the engine does (run locators included)."""
    store = MongoEventStore(db)
    await store.setup()
    report = await store.append(w.commits)
    assert report.failure is None
