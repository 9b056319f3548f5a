"""One workflow task, live: the activities the code asks for go to the executor, and the
task waits for their outcomes only during its eager window
(`RUNSTORE_WORKER_ACTIVITY_EAGER_SECONDS`), feeding each to the code as it comes. An
activity that is quick (the common case) costs no command of its own: its start and
outcome are steps of this task. One still running when the window closes is detached:
the task records a deadline timer for it and ends, so a long activity never holds the
task's batch (and the Kafka offsets behind it); the attempt reports its outcome itself.

A deadline that fired (the attempt reported nothing in time) is decided here: renewed if
the attempt is alive in this worker's executor, else the attempt is timed out
(`ActivityTimeoutError`, retried by its policy): its worker is gone.
"""

from __future__ import annotations

import asyncio

from runstore.workflows._activities import (
    ActivityExecutor,
    ActivityTimeoutError,
    Attempt,
    activity_order,
    activity_outcome,
)
from runstore.workflows._activity_machine import ActivityRequest
from runstore.workflows._api import ActivityInfo
from runstore.workflows._instance import WorkflowInstance
from services.common.metrics import ACTIVITIES
from services.common.settings import WorkerSettings

DEADLINE_GRACE_SECONDS = 2.0
"""A live worker reports an attempt's own timeout itself; its deadline timer fires this
much later, so it only ever decides for an attempt whose worker is gone."""


def attempt_info(instance: WorkflowInstance, request: ActivityRequest) -> ActivityInfo:
    return ActivityInfo(
        execution_id=instance.execution_id,
        run_id=instance.run_id,
        workflow_name=instance.workflow_name,
        activity_id=request.activity_id,
        activity_name=request.definition.name,
        attempt=request.attempt,
    )


class TaskDriver:
    def __init__(self, executor: ActivityExecutor, settings: WorkerSettings, deployment: str):
        self.executor = executor
        self.eager_seconds = settings.worker_activity_eager_seconds
        self.deadline_cap = settings.worker_activity_deadline_seconds
        self.deployment = deployment
        self._completed = ACTIVITIES.labels(deployment, "completed")

    async def drive(self, instance: WorkflowInstance) -> None:
        """Run the code's activities until the code waits on something only a later task
        can bring (a timer, a signal, a detached activity's report …)."""
        loop = asyncio.get_running_loop()
        window_ends = loop.time() + self.eager_seconds
        self._decide_deadlines(instance)
        self._stop_abandoned(instance)
        waiting: list[Attempt] = []
        try:
            while True:
                for request in instance.take_activity_requests():
                    waiting.append(self.executor.start(attempt_info(instance, request), request))
                for attempt in [a for a in waiting if self._abandoned(instance, a)]:
                    waiting.remove(attempt)
                    self.executor.cancel(attempt)
                if not waiting or instance.finished:
                    return  # (the finally stops what the closed run no longer waits for)
                done = [a for a in waiting if a.task.done()]
                if not done and window_ends > loop.time():
                    # One turn of the loop first: an activity that does not wait (most of
                    # them, bench/bench_workflows.py's) ends in it, with no `asyncio.wait`.
                    await asyncio.sleep(0)
                    done = [a for a in waiting if a.task.done()]
                left = window_ends - loop.time()
                if not done and left > 0:
                    tasks = {a.task for a in waiting}
                    await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                    done = [a for a in waiting if a.task.done()]
                if not done:
                    break
                for attempt in sorted(done, key=lambda a: activity_order(a.info.activity_id)):
                    waiting.remove(attempt)
                    self._feed(instance, attempt)
            # The window is over: what still runs goes on without this task.
            for attempt in sorted(waiting, key=lambda a: activity_order(a.info.activity_id)):
                left_here = attempt.time_left(loop.time(), self.deadline_cap)
                deadline = (left_here or 0.0) + DEADLINE_GRACE_SECONDS
                info = attempt.info
                if instance.detach_activity(info.activity_id, info.attempt, deadline):
                    self.executor.detach(attempt)
                else:
                    self.executor.cancel(attempt)
            waiting = []
        finally:
            for attempt in waiting:  # the task failed or the run closed: nobody waits for these
                self.executor.cancel(attempt)

    def _feed(self, instance: WorkflowInstance, attempt: Attempt) -> None:
        if attempt.task.cancelled():
            return
        result, error = attempt.task.result()
        info = attempt.info
        if instance.activity_outcome(info.activity_id, info.attempt, result, error) is not None:
            counter = (
                self._completed
                if error is None
                else ACTIVITIES.labels(self.deployment, activity_outcome(error))
            )
            counter.inc()

    @staticmethod
    def _abandoned(instance: WorkflowInstance, attempt: Attempt) -> bool:
        return instance.activity_abandoned(attempt.info.activity_id)

    def _decide_deadlines(self, instance: WorkflowInstance) -> None:
        for activity_id, attempt in instance.take_fired_deadlines():
            left = self.executor.time_left(
                instance.execution_id, activity_id, attempt, self.deadline_cap
            )
            if left is not None:
                instance.renew_deadline(activity_id, attempt, left + DEADLINE_GRACE_SECONDS)
                continue
            error = ActivityTimeoutError(
                f"activity {activity_id} attempt {attempt} reported no outcome before its "
                "deadline: the worker running it is gone (or it overran its timeout)"
            )
            instance.activity_outcome(activity_id, attempt, error=error)
            ACTIVITIES.labels(self.deployment, "timed_out").inc()

    def _stop_abandoned(self, instance: WorkflowInstance) -> None:
        """Detached attempts the code stopped waiting for (it was cancelled) are stopped
        if they run here; their outcome would change nothing."""
        for activity_id, attempt in instance.take_abandoned_attempts():
            running = self.executor.find(instance.execution_id, activity_id, attempt)
            if running is not None:
                self.executor.cancel(running)
