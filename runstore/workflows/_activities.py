"""Running one activity attempt inside the worker: its context (`activity.info()`,
`activity.heartbeat()`), its timeouts, and how its outcome is counted."""

from __future__ import annotations

import asyncio
from typing import Any

from runstore.workflows._api import ActivityInfo, activity_context
from runstore.workflows._instance import ActivityRequest, WorkflowInstance
from services.common.worker_registry import execution_log_context


class ActivityTimeoutError(TimeoutError):
    """An activity attempt overran its start-to-close or heartbeat timeout."""


async def run_activity(
    instance: WorkflowInstance, request: ActivityRequest
) -> tuple[Any, BaseException | None]:
    """Run one activity attempt under its start-to-close and heartbeat timeouts: its
    result, or the error it (or its timeout) ended with."""
    loop = asyncio.get_running_loop()
    last_beat = [loop.time()]
    info = ActivityInfo(
        execution_id=instance.execution_id,
        run_id=instance.run_id,
        workflow_name=instance.workflow_name,
        activity_id=request.activity_id,
        activity_name=request.definition.name,
        attempt=request.attempt,
    )
    token = activity_context.set((info, lambda: last_beat.__setitem__(0, loop.time())))
    try:
        with execution_log_context(
            instance.execution_id,
            instance.run_id,
            activity_id=request.activity_id,
            workflow_name=instance.workflow_name,
        ):
            job = asyncio.ensure_future(request.definition.fn(*request.args, **request.kwargs))
    finally:
        activity_context.reset(token)
    started = loop.time()
    stc = request.start_to_close_timeout.total_seconds() if request.start_to_close_timeout else None
    hb = request.heartbeat_timeout.total_seconds() if request.heartbeat_timeout else None
    try:
        while True:
            waits = [
                w
                for w in (
                    stc - (loop.time() - started) if stc else None,
                    hb - (loop.time() - last_beat[0]) if hb else None,
                )
                if w is not None
            ]
            done, _ = await asyncio.wait({job}, timeout=max(0.0, min(waits)) if waits else None)
            if done:
                return job.result(), None
            if stc and loop.time() - started >= stc:
                job.cancel()
                return None, ActivityTimeoutError(f"start_to_close_timeout of {stc} s passed")
            if hb and loop.time() - last_beat[0] >= hb:
                job.cancel()
                return None, ActivityTimeoutError(f"no heartbeat for {hb} s")
    except Exception as exc:
        return None, exc


def activity_outcome(error: BaseException | None) -> str:
    if error is None:
        return "completed"
    return "timed_out" if isinstance(error, ActivityTimeoutError) else "failed"


def activity_order(request: ActivityRequest) -> tuple[int, str]:
    digits = "".join(ch for ch in request.activity_id if ch.isdigit())
    return (int(digits or 0), request.activity_id)
