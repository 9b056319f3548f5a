"""What activity authors use: `@activity`, `activity.info()`, `activity.heartbeat()`.

Called inside workflow code, an `@activity` function runs as a durable activity
(`workflow.execute_activity`); called anywhere else, it is the plain coroutine function.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, overload

from runstore.workflows._definitions import (
    ActivityDefinition,
    RetryPolicy,
    WorkflowDefinitionError,
)
from runstore.workflows._machine import current

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_START_TO_CLOSE = timedelta(minutes=5)


@dataclass(frozen=True)
class ActivityInfo:
    """What an activity attempt knows about itself. `idempotency_key` is stable across
    re-deliveries of the same attempt: use it to make side effects apply once."""

    execution_id: str
    run_id: str
    workflow_name: str
    activity_id: str
    activity_name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}:{self.activity_id}:{self.attempt}"


activity_context: contextvars.ContextVar[tuple[ActivityInfo, Callable[[], None]]] = (
    contextvars.ContextVar("runstore_activity")
)


class ActivityFunction:
    """An `@activity`: called inside workflow code it runs as a durable activity; called
    anywhere else it is the plain async function (handy in tests)."""

    def __init__(self, definition: ActivityDefinition) -> None:
        self.definition = definition
        self.__name__ = definition.name
        self.__doc__ = definition.fn.__doc__
        self.__wrapped__ = definition.fn

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        try:
            current.get()
        except LookupError:
            return self.definition.fn(*args, **kwargs)
        from runstore.workflows._api import workflow  # the workflow API imports this one

        return workflow.execute_activity(self, *args, **kwargs)


class _ActivityApi:
    """`@activity` / `@activity(name=…, start_to_close_timeout=…, retry_policy=…)` and the
    functions activity code calls (`activity.heartbeat()`, `activity.info()`)."""

    @overload
    def __call__(self, fn: F) -> F: ...

    @overload
    def __call__(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        start_to_close_timeout: timedelta | None = DEFAULT_START_TO_CLOSE,
        heartbeat_timeout: timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        retry_policy_max_attempts: int | None = None,
        retry_policy_backoff_coefficient: float | None = None,
    ) -> Callable[[F], F]: ...

    def __call__(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        start_to_close_timeout: timedelta | None = DEFAULT_START_TO_CLOSE,
        heartbeat_timeout: timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        retry_policy_max_attempts: int | None = None,
        retry_policy_backoff_coefficient: float | None = None,
    ) -> Any:
        def decorate(target: Callable[..., Any]) -> Any:
            if not inspect.iscoroutinefunction(target):
                raise WorkflowDefinitionError(f"activity {target.__name__} must be `async def`")
            policy = retry_policy or RetryPolicy()
            if retry_policy_max_attempts is not None:
                policy = _replace(policy, maximum_attempts=retry_policy_max_attempts)
            if retry_policy_backoff_coefficient is not None:
                policy = _replace(policy, backoff_coefficient=retry_policy_backoff_coefficient)
            return ActivityFunction(
                ActivityDefinition(
                    name=name or target.__name__,
                    fn=target,
                    start_to_close_timeout=start_to_close_timeout,
                    heartbeat_timeout=heartbeat_timeout,
                    retry_policy=policy,
                )
            )

        return decorate if fn is None else decorate(fn)

    @staticmethod
    def heartbeat(*details: Any) -> None:
        """Tell the worker this attempt is alive (resets its heartbeat timeout)."""
        try:
            _, beat = activity_context.get()
        except LookupError:
            return
        beat()

    @staticmethod
    def info() -> ActivityInfo:
        try:
            return activity_context.get()[0]
        except LookupError:
            raise RuntimeError("activity.info() is only available inside an activity") from None


def _replace(policy: RetryPolicy, **changes: Any) -> RetryPolicy:
    from dataclasses import replace

    return replace(policy, **changes)


activity = _ActivityApi()
activity_heartbeat = activity.heartbeat
