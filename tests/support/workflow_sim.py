"""An in-memory stand-in for engine + timers, to drive the worker SDK's replay in unit tests.

Commands go through the real pure domain (`decide`/`fold`); each workflow task is run by
a NEW `WorkflowInstance` replayed from the whole history (so every task also proves that
the history replays), then live through the real `TaskDriver.drive`. An activity still
running when a task's eager window closes reports itself as RecordActivityTask, which the
sim applies like the engine (`settle`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from runstore.workflows import Worker
from runstore.workflows._activities import Attempt, Outcome
from runstore.workflows._instance import WorkflowInstance
from runstore.workflows._reports import activity_report
from schemas.commands import (
    CancelExecution,
    Command,
    CompleteWorkflowTask,
    CompleteWorkflowTaskPayload,
    FireTimer,
    FireTimerPayload,
    ReasonPayload,
    ResetExecution,
    ResetPayload,
    SignalExecution,
    SignalPayload,
    StartWorkflow,
    StartWorkflowPayload,
)
from schemas.events import Event, EventType
from services.common.settings import WorkerSettings
from services.engine.domain import Context, ExecutionState, decide, fold

T0 = 1_800_000_000 * 10**9
SECOND = 10**9
NOW = datetime(2027, 1, 1, tzinfo=UTC)


class WorkflowSim:
    def __init__(
        self,
        workflows: list[type],
        activities: list[Any] = (),  # type: ignore[assignment]
        eager_seconds: float = 5.0,
    ) -> None:
        self._worker_args = (workflows, activities, eager_seconds)
        self.worker = self._new_worker()
        self.reports: list[Command] = []
        self.reported = asyncio.Event()
        self.state: ExecutionState | None = None
        self.events: list[Event] = []
        self.clock_ns = T0
        self.n = 0
        self.execution_id = "wf-1"

    def _new_worker(self) -> Worker:
        workflows, activities, eager_seconds = self._worker_args
        settings = WorkerSettings(worker_activity_eager_seconds=eager_seconds)
        worker = Worker(workflows, activities, settings=settings)
        worker.executor.report = self._reported
        return worker

    def restart_worker(self) -> None:
        """As after a crash: a new worker whose executor runs nothing; the old one's
        attempts are stopped without a report."""
        old = self.worker
        self.worker = self._new_worker()
        old.executor.report = None
        for key in list(old.executor._attempts):
            attempt = old.executor.find(*key)
            if attempt is not None:
                old.executor.cancel(attempt)

    # --- the engine's side ---

    def apply(self, cmd: Command) -> list[Event]:
        self.n += 1
        self.clock_ns += SECOND
        seq = (self.state.seq if self.state else 0) + 1
        ctx = Context(
            now_ns=self.clock_ns,
            new_run_id=f"run-{seq}",
            new_execution_id=f"next-{seq}",
            successor_run_id=f"succ-{seq}",
            history=tuple(e for e in self.events if self.state and e.run_id == self.state.run_id),
        )
        events = decide(self.state, cmd, ctx)
        self.state = fold(events, self.state)
        self.events.extend(events)
        return events

    def _id(self) -> str:
        return f"cmd-{self.n + 1}"

    def start(self, workflow_name: str, value: Any = None) -> None:
        self.apply(
            StartWorkflow(
                command_id=self._id(),
                execution_id=self.execution_id,
                issued_at=NOW,
                payload=StartWorkflowPayload(workflow_name=workflow_name, input=value),
            )
        )

    def signal(self, name: str, value: Any = None) -> None:
        self.apply(
            SignalExecution(
                command_id=self._id(),
                execution_id=self.execution_id,
                issued_at=NOW,
                payload=SignalPayload(name=name, input=value),
            )
        )

    def cancel(self) -> None:
        self.apply(
            CancelExecution(
                command_id=self._id(),
                execution_id=self.execution_id,
                issued_at=NOW,
                payload=ReasonPayload(reason="test"),
            )
        )

    async def _reported(self, attempt: Attempt, outcome: Outcome) -> None:
        self.reports.append(activity_report(attempt, outcome))
        self.reported.set()

    async def settle(self) -> None:
        """Wait for a detached activity's report and apply it (as the engine would)."""
        if not self.reports:
            self.reported.clear()
            await asyncio.wait_for(self.reported.wait(), 30)
        reports, self.reports = self.reports, []
        for report in reports:
            self.apply(report)

    def reset(self, event_id: int) -> None:
        self.apply(
            ResetExecution(
                command_id=self._id(),
                execution_id=self.execution_id,
                issued_at=NOW,
                payload=ResetPayload(event_id=event_id, reason="test"),
            )
        )

    def run_events(self) -> list[Event]:
        """The latest run's history (event_number order)."""
        assert self.state is not None
        return [e for e in self.events if e.run_id == self.state.run_id]

    def pending_timers(self) -> list[str]:
        started = [e.attributes.timer_id for e in self.events if e.type == EventType.TIMER_STARTED]  # type: ignore[union-attr]
        ended = {
            e.attributes.timer_id  # type: ignore[union-attr]
            for e in self.events
            if e.type in {EventType.TIMER_FIRED, EventType.TIMER_CANCELED}
        }
        return [t for t in started if t not in ended]

    def fire_timers(self, deadlines: bool = False) -> None:
        """Fire the pending timers (activity deadlines only if asked: firing one means
        its attempt's worker went silent)."""
        assert self.state is not None
        for timer_id in self.pending_timers():
            if timer_id.startswith("activity:") and not deadlines:
                continue
            self.apply(
                FireTimer(
                    command_id=self._id(),
                    execution_id=self.execution_id,
                    issued_at=NOW,
                    payload=FireTimerPayload(run_id=self.state.run_id, timer_id=timer_id),
                )
            )

    # --- the worker's side ---

    def replay(self) -> WorkflowInstance:
        assert self.state is not None
        run_id = self.state.run_id
        history = [e for e in self.events if e.run_id == run_id]
        opening = [
            e
            for e in history
            if e.type
            in {EventType.WORKFLOW_EXECUTION_STARTED, EventType.WORKFLOW_EXECUTION_RETRY_STARTED}
        ][-1]
        started = self.state.started
        instance = WorkflowInstance(
            self.worker.workflows[self.state.workflow_name],
            execution_id=self.execution_id,
            run_id=run_id,
            input=started.input.value,
            attempt=self.state.attempt,
            activities=self.worker.activities,
            started_ns=opening.timestamp_ns,
        )
        instance.apply(e for e in history if (e.seq, e.index) >= (opening.seq, opening.index))
        return instance

    async def task(self) -> WorkflowInstance:
        """One workflow task: replay, go live, run activities, record the steps."""
        instance = self.replay()
        if instance.finished:
            return instance
        task_seq = instance.applied_seq
        instance.go_live()
        await self.worker.driver.drive(instance)
        steps = instance.take_steps()
        if steps:
            assert self.state is not None
            self.apply(
                CompleteWorkflowTask(
                    command_id=f"wft:{self.state.run_id}:{task_seq}",
                    execution_id=self.execution_id,
                    issued_at=NOW,
                    payload=CompleteWorkflowTaskPayload(
                        run_id=self.state.run_id, task_seq=task_seq, steps=steps
                    ),
                )
            )
        return instance

    async def run_to_end(self, max_tasks: int = 50) -> None:
        """Tasks and timer firings until the run closes (or nothing is left to do)."""
        for _ in range(max_tasks):
            assert self.state is not None
            if not self.state.is_open:
                return
            await self.task()
            if not self.state.is_open:
                return
            if self.state.activities:  # detached attempts: wait for their reports
                await self.settle()
                continue
            if not self.pending_timers():
                return
            self.fire_timers()

    def types(self) -> list[str]:
        return [e.type.value for e in self.events]
