"""What workflow authors use: `workflow.*` (the `activity` decorator is _activity_api.py's,
re-exported here)."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from runstore.workflows._activity_api import (
    DEFAULT_START_TO_CLOSE,
    ActivityFunction,
    ActivityInfo,
    activity,
    activity_context,
    activity_heartbeat,
)
from runstore.workflows._definitions import (
    HANDLER_MARK,
    RUN_MARK,
    Handler,
    RetryPolicy,
    WorkflowDefinition,
    WorkflowDefinitionError,
    build_definition,
    definition_of,
    from_json,
)
from runstore.workflows._errors import ContinueAsNewRequest
from runstore.workflows._instance import WorkflowInstance, current
from schemas.commands import CustomTaskStep
from schemas.common import Failure, ParentClosePolicy

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

__all__ = [
    "DEFAULT_START_TO_CLOSE",
    "ActivityFunction",
    "ActivityInfo",
    "ChildHandle",
    "activity",
    "activity_context",
    "activity_heartbeat",
    "workflow",
]


def _instance() -> WorkflowInstance:
    try:
        return WorkflowInstance.of_current()
    except LookupError:
        raise RuntimeError("this function is only available inside workflow code") from None


# --- workflows --------------------------------------------------------------------------


class ChildHandle:
    """A started child workflow: `await handle.result()` waits for it to close."""

    def __init__(self, execution_id: str, result: asyncio.Future[Any], returns: Any) -> None:
        self.execution_id = execution_id
        self._result = result
        self._returns = returns

    async def result(self) -> Any:
        value = await self._result
        return value if self._returns is None else from_json(self._returns, value)


class _WorkflowLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Logs with the execution's ids; silent while replaying (a record is logged once)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        try:
            instance = current.get()
        except LookupError:
            return msg, kwargs
        extra = kwargs.setdefault("extra", {})
        extra.update(execution_id=instance.execution_id, run_id=instance.run_id)
        return f"[{instance.workflow_name} {instance.execution_id}] {msg}", kwargs

    def isEnabledFor(self, level: int) -> bool:
        try:
            if current.get().replaying:
                return False
        except LookupError:
            pass
        return super().isEnabledFor(level)


class workflow:
    """Decorators for workflow classes and the functions workflow code calls."""

    logger = _WorkflowLogger(logging.getLogger("runstore.workflows.user"), {})

    # --- declaring ---

    @staticmethod
    def define(
        name: str | None = None,
        *,
        display_name: str | None = None,
        description: str | None = None,
        workflow_display_name: str | None = None,
        workflow_description: str | None = None,
    ) -> Callable[[C], C]:
        """Register a class as a workflow; `name` is what execute calls it by."""

        def decorate(cls: C) -> C:
            definition = build_definition(
                cls,
                name or cls.__name__,
                display_name or workflow_display_name,
                description or workflow_description,
            )
            cls.__runstore_workflow__ = definition  # type: ignore[attr-defined]
            return cls

        return decorate

    @staticmethod
    def run(fn: F) -> F:
        """Mark the workflow's entry point (`async def run(self, arg)`)."""
        setattr(fn, RUN_MARK, True)
        return fn

    entrypoint = run

    @staticmethod
    def signal(
        fn: F | None = None, *, name: str | None = None, description: str | None = None
    ) -> Any:
        return _handler("signal", fn, name, description)

    @staticmethod
    def query(
        fn: F | None = None, *, name: str | None = None, description: str | None = None
    ) -> Any:
        return _handler("query", fn, name, description)

    @staticmethod
    def update(
        fn: F | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        validator: Callable[..., Any] | None = None,
    ) -> Any:
        """An update handler; `validator` (or `@handler.validator`) may refuse the input
        by raising, before anything is recorded."""
        return _handler("update", fn, name, description, validator)

    # --- doing ---

    @staticmethod
    async def execute_activity(
        fn: Any,
        *args: Any,
        start_to_close_timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run an activity durably and return its result (recorded: a replay returns it
        without running the activity again)."""
        instance = _instance()
        if isinstance(fn, ActivityFunction):
            definition = fn.definition
        elif isinstance(fn, str) and fn in instance.activities:
            definition = instance.activities[fn]
        else:
            raise WorkflowDefinitionError(f"{fn!r} is not an @activity")
        return await instance.schedule_activity(
            definition,
            args,
            kwargs,
            retry_policy=retry_policy,
            start_to_close_timeout=start_to_close_timeout,
            heartbeat_timeout=heartbeat_timeout,
        )

    @staticmethod
    async def sleep(duration: timedelta | float) -> None:
        """A durable timer: survives worker restarts; fired by the timers service."""
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        instance = _instance()
        timer_id = instance.start_timer(seconds)
        try:
            await instance.timer_future(timer_id)
        except asyncio.CancelledError:
            instance.cancel_timer(timer_id)
            raise

    @staticmethod
    async def wait_condition(
        check: Callable[[], bool],
        *,
        timeout: timedelta | float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Wait until `check()` is true (re-checked whenever the code has run); with a
        timeout, raise `asyncio.TimeoutError` when it passes first (a durable timer)."""
        if check():
            return
        instance = _instance()
        waiting = instance.wait_condition(check)
        if timeout is None:
            await waiting
            return
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout

        def expire() -> None:
            if not waiting.done():
                waiting.set_exception(TimeoutError("wait_condition timed out"))

        timer_id = instance.start_timer(seconds, on_fire=expire)
        try:
            await waiting
        finally:
            instance.cancel_timer(timer_id)

    @staticmethod
    async def start_child_workflow(
        child: Any,
        arg: Any = None,
        *,
        id: str | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.TERMINATE,
        deployment_name: str | None = None,
        execution_timeout: timedelta | None = None,
        display_name: str | None = None,
    ) -> ChildHandle:
        """Start a child workflow (a class decorated with @workflow.define, or its name)
        and return once it started; raises ChildWorkflowError if it could not."""
        instance = _instance()
        returns = None
        if isinstance(child, str):
            name = child
        else:
            definition: WorkflowDefinition = definition_of(child)
            name, returns = definition.name, definition.run_method
        child_id, state = instance.start_child(
            name,
            arg,
            child_id=id,
            parent_close_policy=parent_close_policy,
            deployment_name=deployment_name,
            execution_timeout=execution_timeout,
            display_name=display_name,
        )
        await state.started
        return ChildHandle(child_id, state.result, returns)

    @staticmethod
    async def execute_child_workflow(child: Any, arg: Any = None, **options: Any) -> Any:
        """Start a child workflow and wait for its result."""
        handle = await workflow.start_child_workflow(child, arg, **options)
        return await handle.result()

    @staticmethod
    def continue_as_new(arg: Any = None, *, workflow_name: str | None = None) -> None:
        """End this run and start the workflow again with `arg` under a new execution."""
        _instance()
        raise ContinueAsNewRequest(arg, workflow_name)

    @staticmethod
    def side_effect(compute: Callable[[], Any], *, name: str = "side_effect") -> Any:
        """Run `compute` once and record its value; a replay returns the recorded value."""
        return _instance().side_effect(name, compute)

    @staticmethod
    def report_progress(
        custom_task_id: str,
        custom_task_type: str,
        stage: str = "in_progress",
        payload: Any = None,
        *,
        failure: Failure | None = None,
        reason: str | None = None,
    ) -> None:
        """Record a custom task's progress (CUSTOM_TASK_* events in the history)."""
        _instance().custom_task(
            CustomTaskStep(
                custom_task_id=custom_task_id,
                custom_task_type=custom_task_type,
                stage=stage,
                payload=payload,
                failure=failure,
                reason=reason,
            )
        )

    @staticmethod
    def now() -> datetime:
        """The workflow's clock: the time of the history event the code last saw."""
        return _instance().now()

    @staticmethod
    def uuid4() -> uuid.UUID:
        """A random UUID that a replay reproduces."""
        return _instance().uuid4()

    @staticmethod
    def random() -> random.Random:
        """A random generator seeded by the run: a replay draws the same numbers."""
        return _instance().rng

    @staticmethod
    def is_replaying() -> bool:
        return _instance().replaying

    @staticmethod
    def info() -> dict[str, Any]:
        instance = _instance()
        return {
            "execution_id": instance.execution_id,
            "run_id": instance.run_id,
            "workflow_name": instance.workflow_name,
            "attempt": instance.attempt,
        }


def _handler(
    kind: str,
    fn: Callable[..., Any] | None,
    name: str | None,
    description: str | None,
    validator: Callable[..., Any] | None = None,
) -> Any:
    def decorate(target: Callable[..., Any]) -> Any:
        handler = Handler(kind, name or target.__name__, target, validator, description)
        setattr(target, HANDLER_MARK, handler)
        if kind == "update":

            def set_validator(check: Callable[..., Any]) -> Callable[..., Any]:
                setattr(
                    target, HANDLER_MARK, Handler(kind, handler.name, target, check, description)
                )
                return check

            target.validator = set_validator  # type: ignore[attr-defined]
        return target

    return decorate if fn is None else decorate(fn)
