"""The core of a workflow instance: the user's object on its deterministic loop, the
steps it issues, and how each step is checked against the history while replaying.

`WorkflowInstance` (_instance.py) builds on this through `ActivityMachine`
(_activity_machine.py); this layer knows nothing of activities, timers or children.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from runstore.workflows._definitions import (
    ActivityDefinition,
    WorkflowDefinition,
    call_arguments,
    to_json,
)
from runstore.workflows._errors import (
    ApplicationError,
    ContinueAsNewRequest,
    NondeterminismError,
    failure_of,
)
from runstore.workflows._loop import DeterministicLoop
from runstore.workflows._replay_rules import describe_event, describe_step, matches
from schemas.commands import (
    CancelStep,
    CancelTimerStep,
    CompleteStep,
    ContinueAsNewStep,
    FailStep,
    StartTimerStep,
    Step,
)
from schemas.events import Event

current: contextvars.ContextVar[InstanceCore] = contextvars.ContextVar("runstore_workflow")


class InstanceCore:
    """One run of one workflow: its code, its loop, its steps."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        *,
        execution_id: str,
        run_id: str,
        input: Any,
        attempt: int,
        activities: dict[str, ActivityDefinition],
        started_ns: int,
    ) -> None:
        self.definition = definition
        self.execution_id = execution_id
        self.run_id = run_id
        self.workflow_name = definition.name
        self.attempt = attempt
        self.activities = activities
        self.now_ns = started_ns
        self.loop = DeterministicLoop(lambda: self.now_ns / 1e9)  # type: ignore[abstract]
        self._rng: random.Random | None = None
        self.replaying = True
        self.finished = False
        self.cancel_requested = False
        self.applied_seq = 0
        """The last seq of the history this instance has taken in."""
        self.last_command_id: str | None = None
        """The command of the worker's last live activation, until the history shows it."""
        self.last_steps: list[Step] = []
        """The steps of that command: the history must hold these, not another report."""
        self._input = input
        self._counters: dict[str, int] = {}
        self._expected: deque[Event] = deque()
        self._steps: list[Step] = []
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._timers: dict[str, asyncio.Future[None]] = {}
        self._timer_callbacks: dict[str, Callable[[], None]] = {}
        self.obj = definition.cls()
        self._main: asyncio.Task[Any] | None = None
        self._violation: NondeterminismError | None = None
        self._setup()

    def _setup(self) -> None:
        """Where each layer above this one sets up its own state (before any history)."""

    # --- what the worker takes ----------------------------------------------------------

    def take_steps(self) -> list[Step]:
        steps, self._steps = self._steps, []
        return steps

    def has_steps(self) -> bool:
        return bool(self._steps)

    # --- deterministic ids and time -----------------------------------------------------

    def next_id(self, prefix: str) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}{n}"

    def now(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.now_ns // 1000)

    @property
    def rng(self) -> random.Random:
        """The run's generator, seeded by run and attempt; made on first use (seeding
        costs more than most first tasks' other work, and most runs never draw)."""
        if self._rng is None:
            self._rng = random.Random(f"{self.run_id}:{self.attempt}")
        return self._rng

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def wait_condition(self, check: Callable[[], bool]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        self._conditions.append((check, future))
        return future

    # --- durable timers -----------------------------------------------------------------

    def start_timer(self, seconds: float, on_fire: Callable[[], None] | None = None) -> str:
        timer_id = self.next_id("t")
        self._emit(StartTimerStep(timer_id=timer_id, duration_seconds=max(0.0, seconds)))
        future: asyncio.Future[None] = self.loop.create_future()
        self._timers[timer_id] = future
        if on_fire is not None:
            self._timer_callbacks[timer_id] = on_fire
        return timer_id

    def timer_future(self, timer_id: str) -> asyncio.Future[None]:
        return self._timers[timer_id]

    def cancel_timer(self, timer_id: str) -> None:
        future = self._timers.get(timer_id)
        if future is None or future.done():
            return
        future.cancel()
        self._timer_callbacks.pop(timer_id, None)
        if not self.finished:
            self._emit(CancelTimerStep(timer_id=timer_id))

    def _timer_fired(self, timer_id: str) -> None:
        future = self._timers.get(timer_id)
        if future is not None and not future.done():
            future.set_result(None)
            callback = self._timer_callbacks.pop(timer_id, None)
            if callback is not None:
                callback()

    # --- stepping the code --------------------------------------------------------------

    def _as_current(self) -> _CurrentInstance:
        return _CurrentInstance(self)

    def _start_main(self) -> None:
        if self._main is not None or self.finished:
            return
        args, kwargs = call_arguments(self.definition.run_method, self._input)
        coro: Any = self.definition.run_method(self.obj, *args, **kwargs)
        self._main = self._create_task(coro)
        self._main.add_done_callback(self._main_done)

    def _create_task(self, coro: Any) -> asyncio.Task[Any]:
        """A task of the workflow code on its loop, with this instance as `current`."""
        context = contextvars.copy_context()
        context.run(current.set, self)
        return self.loop.create_task(coro, context=context)

    def _main_done(self, task: asyncio.Task[Any]) -> None:
        if self.finished or self._violation is not None:
            return
        step: Step
        if task.cancelled():
            step = CancelStep(reason="the workflow was canceled")
        else:
            exc = task.exception()
            if exc is None:
                step = CompleteStep(result=to_json(task.result()))
            elif isinstance(exc, ContinueAsNewRequest):
                step = ContinueAsNewStep(input=to_json(exc.input), workflow_name=exc.workflow_name)
            elif isinstance(exc, asyncio.CancelledError) and self.cancel_requested:
                step = CancelStep(reason="the workflow was canceled")
            else:
                retryable = not (isinstance(exc, ApplicationError) and exc.non_retryable)
                step = FailStep(failure=failure_of(exc), retryable=retryable)
        if not self.replaying:
            # While replaying, the run's final event ends the history: nothing to record.
            self._steps.append(step)
        self.finished = True

    def _run(self) -> None:
        """Step the loop until the code is idle and no wait condition became true."""
        token = current.set(self)
        try:
            while True:
                self.loop.run_until_idle()
                ready = [(c, f) for c, f in self._conditions if f.done() or c()]
                if not ready:
                    break
                for item in ready:
                    self._conditions.remove(item)
                    if not item[1].done():
                        item[1].set_result(None)
        finally:
            current.reset(token)
        self.loop.errors.clear()
        if self._violation is not None:
            raise self._violation

    def _emit(self, step: Step) -> Event | None:
        """A step of the code: checked against the history while replaying, kept live."""
        if self.finished and not self.replaying:
            return None
        if not self.replaying:
            self._steps.append(step)
            return None
        if not self._expected:
            raise self._diverged(
                f"the code issued {describe_step(step)}, which the history does not have "
                f"here (workflow {self.workflow_name!r}, execution {self.execution_id!r})"
            )
        recorded = self._expected.popleft()
        if not matches(step, recorded):
            raise self._diverged(
                f"the code issued {describe_step(step)} where the history recorded "
                f"{describe_event(recorded)} (workflow {self.workflow_name!r}, execution "
                f"{self.execution_id!r})"
            )
        self.now_ns = max(self.now_ns, recorded.timestamp_ns)
        return recorded

    def _diverged(self, message: str) -> NondeterminismError:
        """Remembered as well as raised: workflow code may catch what is raised into it,
        but the workflow task must fail all the same."""
        error = NondeterminismError(message)
        if self._violation is None:
            self._violation = error
        return error


class _CurrentInstance:
    def __init__(self, instance: InstanceCore) -> None:
        self.instance = instance
        self.token: contextvars.Token[InstanceCore] | None = None

    def __enter__(self) -> InstanceCore:
        self.token = current.set(self.instance)
        return self.instance

    def __exit__(self, *exc: object) -> None:
        assert self.token is not None
        current.reset(self.token)
