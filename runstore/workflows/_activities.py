"""The worker's activity executor: runs activity attempts, at most
`RUNSTORE_WORKER_ACTIVITY_CONCURRENCY` at once, each with its context
(`activity.info()`, `activity.heartbeat()`) and its start-to-close and heartbeat timeouts.

An attempt belongs to no workflow task: a task waits for it during its eager window only
(`_task_driver.py`); after that the attempt is *detached* and reports its own outcome as
a command (`report`, RecordActivityTask) when it ends, while the worker goes on with other
tasks. Attempts are known by (execution, activity id, attempt): asked to start one that
already runs here (a task replayed again), the executor hands back the running one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runstore.workflows._activity_api import ActivityInfo, activity_context
from runstore.workflows._activity_machine import ActivityRequest
from services.common.worker_registry import execution_log_context

log = logging.getLogger("runstore.worker")

Outcome = tuple[Any, BaseException | None]


class ActivityTimeoutError(TimeoutError):
    """An activity attempt overran its start-to-close or heartbeat timeout, or its worker
    went silent (no outcome reported before the attempt's deadline timer fired)."""


class WorkerStoppedError(RuntimeError):
    """A detached attempt was still running when its worker stopped (SIGTERM): it is
    reported failed, so its retry policy runs it again without waiting for its deadline."""


@dataclass(eq=False)
class Attempt:
    """One activity attempt in the executor."""

    info: ActivityInfo
    request: ActivityRequest
    queued_at: float
    started_at: float | None = None
    """Loop time the body started (None while it waits for a slot)."""
    last_beat: float = 0.0
    detached: bool = False
    stopped: bool = False
    """Cut off by the worker's shutdown: reported failed (`WorkerStoppedError`)."""
    task: asyncio.Task[Outcome] = field(init=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.info.execution_id, self.info.activity_id, self.info.attempt)

    def time_left(self, now: float, cap: float) -> float | None:
        """How long the attempt may still run before its own timeouts (at most `cap`);
        None when it is over (ended, or past a timeout it is about to report)."""
        if self.task.done():
            return None
        request = self.request
        left = cap
        if self.started_at is None:  # still queued: its clocks have not started
            stc = request.start_to_close_timeout
            return min(left, stc.total_seconds()) if stc else left
        if request.start_to_close_timeout:
            left = min(
                left, request.start_to_close_timeout.total_seconds() - (now - self.started_at)
            )
        if request.heartbeat_timeout:
            left = min(left, request.heartbeat_timeout.total_seconds() - (now - self.last_beat))
        return left if left > 0 else None


Report = Callable[[Attempt, Outcome], Awaitable[None]]


class ActivityExecutor:
    """Runs attempts with bounded concurrency; a detached attempt reports itself."""

    def __init__(self, concurrency: int, report: Report | None = None) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._attempts: dict[tuple[str, str, int], Attempt] = {}
        self._reporting: set[asyncio.Future[None]] = set()
        self.report = report
        """Sends a detached attempt's outcome (the worker's RecordActivityTask)."""

    def start(self, info: ActivityInfo, request: ActivityRequest) -> Attempt:
        key = (info.execution_id, info.activity_id, info.attempt)
        running = self._attempts.get(key)
        if running is not None and not running.task.done():
            return running
        loop = asyncio.get_running_loop()
        attempt = Attempt(info=info, request=request, queued_at=loop.time())
        attempt.task = asyncio.create_task(self._run(attempt))
        self._attempts[key] = attempt
        attempt.task.add_done_callback(lambda _: self._ended(attempt))
        return attempt

    def detach(self, attempt: Attempt) -> None:
        """The attempt outlives its workflow task: report its outcome when it ends."""
        attempt.detached = True
        if attempt.task.done():
            self._ended(attempt)

    def find(self, execution_id: str, activity_id: str, attempt: int) -> Attempt | None:
        """That attempt if it runs (or waits for a slot) here."""
        return self._attempts.get((execution_id, activity_id, attempt))

    def time_left(
        self, execution_id: str, activity_id: str, attempt: int, cap: float
    ) -> float | None:
        """`Attempt.time_left` of that attempt if it runs here, else None."""
        running = self.find(execution_id, activity_id, attempt)
        if running is None:
            return None
        return running.time_left(asyncio.get_running_loop().time(), cap)

    def cancel(self, attempt: Attempt) -> None:
        """Stop an attempt whose outcome nobody waits for; nothing is reported."""
        attempt.detached = False
        attempt.task.cancel()

    def cancel_run(self, execution_id: str, run_id: str) -> None:
        """The run closed: its attempts still running here are stopped."""
        for attempt in list(self._attempts.values()):
            if attempt.info.execution_id == execution_id and attempt.info.run_id == run_id:
                self.cancel(attempt)

    @property
    def running(self) -> int:
        return sum(1 for a in self._attempts.values() if not a.task.done())

    async def close(self, grace_seconds: float = 0.0) -> None:
        """The worker is stopping: detached attempts get `grace_seconds` to end (and
        report); those still running then are stopped and reported failed with
        `WorkerStoppedError` (retried at once by their policy, not after their deadline).
        Attempts of unfinished tasks are stopped silently (their tasks are redelivered)."""
        detached = [a for a in self._attempts.values() if a.detached and not a.task.done()]
        if detached and grace_seconds > 0:
            await asyncio.wait({a.task for a in detached}, timeout=grace_seconds)
        stopping = [a.task for a in self._attempts.values() if not a.task.done()]
        for attempt in list(self._attempts.values()):
            attempt.stopped = attempt.detached
            attempt.task.cancel()
        if stopping:
            await asyncio.wait(stopping, timeout=5)
        await asyncio.sleep(0)  # the ended attempts' callbacks start their reports
        if self._reporting:
            await asyncio.wait(self._reporting, timeout=5)

    # --- internals -----------------------------------------------------------------------

    async def _run(self, attempt: Attempt) -> Outcome:
        async with self._slots:
            return await run_attempt(attempt)

    def _ended(self, attempt: Attempt) -> None:
        if self._attempts.get(attempt.key) is attempt and attempt.task.done():
            del self._attempts[attempt.key]
        if not attempt.detached or not attempt.task.done():
            return
        if attempt.task.cancelled() and not attempt.stopped:
            return
        attempt.detached = False  # reported once
        if self.report is None:
            return
        outcome: Outcome = (
            (None, WorkerStoppedError("the worker stopped while the attempt ran"))
            if attempt.task.cancelled()
            else attempt.task.result()
        )
        job = asyncio.ensure_future(self.report(attempt, outcome))
        self._reporting.add(job)
        job.add_done_callback(self._reporting.discard)


async def run_attempt(attempt: Attempt) -> Outcome:
    """Run one activity attempt under its start-to-close and heartbeat timeouts: its
    result, or the error it (or its timeout) ended with."""
    loop = asyncio.get_running_loop()
    info, request = attempt.info, attempt.request
    attempt.started_at = attempt.last_beat = loop.time()

    def beat() -> None:
        attempt.last_beat = loop.time()

    token = activity_context.set((info, beat))
    try:
        with execution_log_context(
            info.execution_id,
            info.run_id,
            activity_id=info.activity_id,
            workflow_name=info.workflow_name,
        ):
            job = asyncio.ensure_future(request.definition.fn(*request.args, **request.kwargs))
    finally:
        activity_context.reset(token)
    started = attempt.started_at
    stc = request.start_to_close_timeout.total_seconds() if request.start_to_close_timeout else None
    hb = request.heartbeat_timeout.total_seconds() if request.heartbeat_timeout else None
    try:
        while True:
            waits = [
                w
                for w in (
                    stc - (loop.time() - started) if stc else None,
                    hb - (loop.time() - attempt.last_beat) if hb else None,
                )
                if w is not None
            ]
            done, _ = await asyncio.wait({job}, timeout=max(0.0, min(waits)) if waits else None)
            if done:
                return job.result(), None
            if stc and loop.time() - started >= stc:
                job.cancel()
                return None, ActivityTimeoutError(f"start_to_close_timeout of {stc} s passed")
            if hb and loop.time() - attempt.last_beat >= hb:
                job.cancel()
                return None, ActivityTimeoutError(f"no heartbeat for {hb} s")
    except asyncio.CancelledError:
        job.cancel()
        raise
    except Exception as exc:
        return None, exc


def activity_outcome(error: BaseException | None) -> str:
    """The metrics label of an attempt's outcome."""
    if error is None:
        return "completed"
    return "timed_out" if isinstance(error, ActivityTimeoutError) else "failed"


def activity_order(activity_id: str) -> tuple[int, str]:
    """Attempts that ended together are fed to the code in the order they were scheduled."""
    digits = "".join(ch for ch in activity_id if ch.isdigit())
    return (int(digits or 0), activity_id)
