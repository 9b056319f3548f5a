"""The activity half of a workflow instance: the steps an activity records and how its
outcome reaches the code, live or replayed.

An attempt starts with `ACTIVITY_TASK_STARTED` and ends with `…_COMPLETED`, `…_RETRYING`
(plus a back-off timer; then the next attempt starts) or `…_FAILED`. The worker runs an
attempt in its activity executor: an outcome that arrives within the workflow task's eager
window is a step of that task; an attempt still running then is *detached*: the task
records a deadline timer (`activity:{id}:{attempt}:{n}`) and ends, and the attempt's
outcome arrives later as its own command (RecordActivityTask), an input like a signal.
When a deadline fires before any outcome, the worker that handles it renews it (the
attempt is alive in its executor) or times the attempt out; both are steps, so a replay
follows what was decided. A run opened by a reset carries the activity events before the
reset point: the code gets those outcomes back without running the activities again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, cast

from runstore.workflows._definitions import (
    ActivityDefinition,
    RetryPolicy,
    args_to_json,
    from_json,
    to_json,
)
from runstore.workflows._errors import ActivityError, ApplicationError, failure_of
from runstore.workflows._machine import InstanceCore
from runstore.workflows._replay_rules import deadline_timer_id, parse_deadline
from schemas.commands import ActivityStep, CancelTimerStep, StartTimerStep
from schemas.common import Failure
from schemas.events import Event, EventType

Stage = Literal["completed", "retrying", "failed"]


def stage_after(
    policy: RetryPolicy, attempt: int, failure: Failure | None, error: BaseException | None
) -> Stage:
    """What an attempt's outcome records: completed, or retrying/failed by the policy."""
    if failure is None:
        return "completed"
    non_retryable = (isinstance(error, ApplicationError) and error.non_retryable) or (
        failure.type in policy.non_retryable_error_types
    )
    return "retrying" if not non_retryable and policy.allows_another(attempt) else "failed"


@dataclass
class ActivityRequest:
    """An activity attempt the worker must run for real (live only)."""

    activity_id: str
    definition: ActivityDefinition
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempt: int
    start_to_close_timeout: timedelta | None
    heartbeat_timeout: timedelta | None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class _Activity:
    activity_id: str
    definition: ActivityDefinition
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]
    retry_policy: RetryPolicy
    start_to_close_timeout: timedelta | None
    heartbeat_timeout: timedelta | None
    attempt: int = 1
    resolved: bool = False
    waiting_retry: bool = False
    detached: bool = False
    """The attempt was left running when its workflow task ended (a deadline watches it)."""
    deadline: str | None = None
    """The attempt's pending deadline timer."""
    renewals: int = 0
    stopped: bool = False
    """A detached attempt the code stopped waiting for, already handed to the worker."""


class ActivityMachine(InstanceCore):
    def _setup(self) -> None:
        super()._setup()
        self._activities: dict[str, _Activity] = {}
        self._live_requests: list[ActivityRequest] = []
        self._fired_deadlines: list[tuple[str, int]] = []
        self._deadline_fired_at: dict[str, int] = {}
        """Deadline timer id -> seq of its TIMER_FIRED, as taken in (delivered or not)."""
        self._view_seq: int | None = None
        """While replaying a workflow-task commit: the history that task saw (task_seq)."""
        self._reset_memo: dict[str, list[Event]] = {}
        """A reset's copies of the old run's activity events, by activity id."""

    # --- the code's command -------------------------------------------------------------

    def schedule_activity(
        self,
        definition: ActivityDefinition,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        retry_policy: RetryPolicy | None,
        start_to_close_timeout: timedelta | None,
        heartbeat_timeout: timedelta | None,
    ) -> asyncio.Future[Any]:
        activity = _Activity(
            activity_id=self.next_id("a"),
            definition=definition,
            args=args,
            kwargs=kwargs,
            future=self.loop.create_future(),
            retry_policy=retry_policy or definition.retry_policy,
            start_to_close_timeout=start_to_close_timeout or definition.start_to_close_timeout,
            heartbeat_timeout=heartbeat_timeout or definition.heartbeat_timeout,
        )
        self._activities[activity.activity_id] = activity
        copied = self._reset_memo.pop(activity.activity_id, None)
        if copied is not None:
            self._from_reset(activity, copied)
            return activity.future
        self._emit(
            ActivityStep(
                activity_id=activity.activity_id,
                activity_name=definition.name,
                stage="started",
                attempt=1,
                input=args_to_json(args, kwargs),
            )
        )
        self._request(activity)
        return activity.future

    def _from_reset(self, activity: _Activity, copied: list[Event]) -> None:
        """The activity's events before a reset point, already in this run's history."""
        last: Any = copied[-1]
        name = last.attributes.activity_name
        if name != activity.definition.name:
            raise self._diverged(
                f"the reset copied activity {activity.activity_id} as {name!r}, but the code "
                f"now calls {activity.definition.name!r} there (execution {self.execution_id!r})"
            )
        activity.attempt = last.attributes.attempt
        if last.type == EventType.ACTIVITY_TASK_STARTED:
            self._request(activity)  # it was running at the reset point: run that attempt
            return
        stage = last.type.value.removeprefix("ACTIVITY_TASK_").lower()
        result = last.attributes.result.value if last.attributes.result is not None else None
        self._resolve_activity(activity, result, last.attributes.failure, recorded_stage=stage)

    # --- what the worker does with attempts (live) --------------------------------------

    def take_activity_requests(self) -> list[ActivityRequest]:
        requests, self._live_requests = self._live_requests, []
        return requests

    def activity_outcome(
        self, activity_id: str, attempt: int, result: Any = None, error: BaseException | None = None
    ) -> Stage | None:
        """An attempt ended within the workflow task: record it and wake the code. Returns
        the stage recorded (None if the code no longer waits for that attempt)."""
        activity = self._current_attempt(activity_id, attempt)
        if activity is None:
            return None
        if error is None:
            stage = self._resolve_activity(activity, to_json(result), None)
        else:
            stage = self._resolve_activity(activity, None, failure_of(error), error)
        self._run()
        return stage

    def detach_activity(self, activity_id: str, attempt: int, deadline_seconds: float) -> bool:
        """The workflow task ends while the attempt runs on: watch it with a deadline timer.
        False if the code no longer waits for it (the worker may stop it)."""
        activity = self._current_attempt(activity_id, attempt)
        if activity is None:
            return False
        activity.detached = True
        self._start_deadline(activity, deadline_seconds)
        return True

    def take_fired_deadlines(self) -> list[tuple[str, int]]:
        """Detached attempts whose deadline fired with no outcome: the worker renews each
        (`renew_deadline`) or times it out (`activity_outcome` with a timeout error)."""
        fired, self._fired_deadlines = self._fired_deadlines, []
        return [(a, n) for a, n in fired if self._current_attempt(a, n) is not None]

    def renew_deadline(self, activity_id: str, attempt: int, deadline_seconds: float) -> None:
        activity = self._current_attempt(activity_id, attempt)
        if activity is not None:
            self._start_deadline(activity, deadline_seconds)
            self._run()

    def activity_abandoned(self, activity_id: str) -> bool:
        """The code stopped waiting for this activity (its wait was cancelled)."""
        activity = self._activities.get(activity_id)
        return activity is None or activity.future.cancelled()

    def take_abandoned_attempts(self) -> list[tuple[str, int]]:
        """Detached attempts the code stopped waiting for (each once): the worker stops
        them if they run in its executor."""
        found = []
        for activity in self._activities.values():
            if activity.detached and activity.future.cancelled() and not activity.stopped:
                activity.stopped = True
                found.append((activity.activity_id, activity.attempt))
        return found

    def request_unreported_attempts(self) -> None:
        """Going live: an attempt started in the history that is neither resolved nor
        detached (the worker died inside its task, or a reset cut it off) runs again."""
        for activity in self._activities.values():
            if not (
                activity.resolved
                or activity.waiting_retry
                or activity.detached
                or activity.future.done()
            ):
                self._request(activity)

    # --- history -------------------------------------------------------------------------

    def _take_reset_copies(self, events: list[Event]) -> None:
        for event in events:
            if event.type.value.startswith("ACTIVITY_TASK_"):
                task_id: str = event.attributes.task_id  # type: ignore[union-attr]
                self._reset_memo.setdefault(task_id, []).append(event)

    def _note_deadline_fired(self, event: Event) -> None:
        timer_id: str = event.attributes.timer_id  # type: ignore[union-attr]
        if parse_deadline(timer_id) is not None:
            self._deadline_fired_at.setdefault(timer_id, event.seq)

    def _deadline_event(self, event: Event) -> bool:
        """Apply a deadline timer the history recorded (detach or renewal); False if
        `event` is no deadline timer."""
        attrs: Any = event.attributes
        parsed = parse_deadline(attrs.timer_id)
        if parsed is None:
            return False
        activity_id, attempt, renewal = parsed
        activity = self._current_attempt(activity_id, attempt)
        if activity is None:
            raise self._diverged(
                f"the history watches activity {activity_id} attempt {attempt} with a "
                f"deadline, but the code does not wait for that attempt"
            )
        activity.detached = True
        activity.deadline = attrs.timer_id
        activity.renewals = renewal
        return True

    def _deadline_fired(self, timer_id: str) -> bool:
        """A deadline timer fired (delivered); False if `timer_id` is no deadline."""
        parsed = parse_deadline(timer_id)
        if parsed is None:
            return False
        activity = self._current_attempt(parsed[0], parsed[1])
        if activity is not None and activity.deadline == timer_id:
            activity.deadline = None
            if not self.replaying:
                self._fired_deadlines.append((parsed[0], parsed[1]))
        return True

    def _deliver_activity(self, event: Event) -> None:
        attrs: Any = event.attributes
        activity = self._activities.get(attrs.task_id)
        if activity is None:
            raise self._diverged(
                f"the history resolves activity {attrs.task_id} that the code never started"
            )
        if activity.attempt != attrs.attempt or activity.resolved or activity.waiting_retry:
            return  # a late report of an attempt already decided otherwise: not this one
        stage = event.type.value.removeprefix("ACTIVITY_TASK_").lower()
        result = attrs.result.value if attrs.result is not None else None
        self._resolve_activity(activity, result, attrs.failure, recorded_stage=stage)

    # --- internals -----------------------------------------------------------------------

    def _current_attempt(self, activity_id: str, attempt: int) -> _Activity | None:
        activity = self._activities.get(activity_id)
        if (
            activity is None
            or activity.attempt != attempt
            or activity.resolved
            or activity.waiting_retry
            or activity.future.done()
        ):
            return None
        return activity

    def _start_deadline(self, activity: _Activity, seconds: float) -> None:
        activity.renewals += 1
        timer_id = deadline_timer_id(activity.activity_id, activity.attempt, activity.renewals)
        self._emit(StartTimerStep(timer_id=timer_id, duration_seconds=max(0.0, seconds)))
        activity.deadline = timer_id

    def _request(self, activity: _Activity) -> None:
        if self.replaying:
            return
        self._live_requests.append(
            ActivityRequest(
                activity_id=activity.activity_id,
                definition=activity.definition,
                args=activity.args,
                kwargs=activity.kwargs,
                attempt=activity.attempt,
                start_to_close_timeout=activity.start_to_close_timeout,
                heartbeat_timeout=activity.heartbeat_timeout,
                retry_policy=activity.retry_policy,
            )
        )

    def _resolve_activity(
        self,
        activity: _Activity,
        result: Any,
        failure: Failure | None,
        error: BaseException | None = None,
        recorded_stage: str | None = None,
    ) -> Stage:
        name = activity.definition.name
        stage: Stage
        if recorded_stage is None:
            stage = stage_after(activity.retry_policy, activity.attempt, failure, error)
            self._emit(
                ActivityStep(
                    activity_id=activity.activity_id,
                    activity_name=name,
                    stage=stage,
                    attempt=activity.attempt,
                    result=result if failure is None else None,
                    failure=failure,
                )
            )
        else:
            # The history is the truth: whoever ran the attempt applied the policy.
            stage = cast(Stage, recorded_stage)
        self._end_deadline(activity)
        if stage == "completed":
            activity.resolved = True
            if not activity.future.done():
                activity.future.set_result(from_json(activity.definition.fn, result))
        elif stage == "failed":
            activity.resolved = True
            assert failure is not None
            if not activity.future.done():
                activity.future.set_exception(ActivityError(name, activity.attempt, failure))
        else:
            activity.waiting_retry = True
            delay = activity.retry_policy.delay_after(activity.attempt)
            self.start_timer(delay, on_fire=lambda: self._retry(activity))
        return stage

    def _end_deadline(self, activity: _Activity) -> None:
        """The attempt has its outcome: cancel its pending deadline, unless the history
        this decision is made from already has it fired (a cancel would be refused)."""
        timer_id, activity.deadline = activity.deadline, None
        if timer_id is None:
            return
        fired_at = self._deadline_fired_at.get(timer_id)
        if fired_at is not None and (self._view_seq is None or fired_at <= self._view_seq):
            return
        self._emit(CancelTimerStep(timer_id=timer_id))

    def _retry(self, activity: _Activity) -> None:
        if activity.future.done():
            return
        activity.attempt += 1
        activity.waiting_retry = False
        activity.detached = False
        activity.renewals = 0
        self._emit(
            ActivityStep(
                activity_id=activity.activity_id,
                activity_name=activity.definition.name,
                stage="started",
                attempt=activity.attempt,
            )
        )
        self._request(activity)
