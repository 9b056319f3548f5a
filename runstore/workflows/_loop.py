"""A deterministic asyncio event loop for workflow code.

Workflow code must take the same path every time its history is replayed, so it runs on
a loop of its own that the worker steps by hand: no real clock, no I/O, no threads. Tasks,
futures and `asyncio.gather` work as usual; anything that needs real time
(`asyncio.sleep(n)` with n > 0, `asyncio.wait_for`) raises, pointing at the durable
`workflow.sleep` / `workflow.wait_condition` instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class DeterminismViolation(RuntimeError):
    """Workflow code did something whose outcome a replay could not reproduce."""


class DeterministicLoop(asyncio.AbstractEventLoop):
    """Runs ready callbacks in FIFO order when `run_until_idle` is called; nothing else."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._ready: deque[asyncio.Handle] = deque()
        self._clock = clock
        self.errors: list[BaseException] = []
        """Exceptions no task retrieved (reported by asyncio's exception handler)."""

    # --- stepping ---------------------------------------------------------------------

    def run_until_idle(self) -> None:
        """Run callbacks until none is ready; this loop is the running loop meanwhile."""
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle.cancelled():
                    handle._run()
        finally:
            asyncio.events._set_running_loop(outer)

    # --- what asyncio's futures and tasks need ----------------------------------------

    def time(self) -> float:
        return self._clock()

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self, delay: float, callback: Callable[..., object], *args: Any, **kw: Any
    ) -> Any:
        raise DeterminismViolation(
            "workflow code cannot wait on real time (asyncio.sleep / wait_for / timeouts): "
            "use workflow.sleep or workflow.wait_condition(..., timeout=...)"
        )

    def call_at(  # type: ignore[override]
        self, when: float, callback: Callable[..., object], *args: Any, **kw: Any
    ) -> Any:
        return self.call_later(0, callback)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            self.errors.append(exc)
        log.debug("workflow loop: %s", context.get("message"))

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    def get_task_factory(self) -> None:
        return None

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        raise DeterminismViolation("workflow code cannot use threads")
