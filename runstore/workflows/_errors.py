"""Errors workflow and activity code raises and sees."""

from __future__ import annotations

import asyncio
from typing import Any

from schemas.common import ExecutionStatus, Failure


class ApplicationError(Exception):
    """Raise from an activity or a workflow to fail it with a type a program can match.

    `non_retryable=True` stops retries of the activity (or the run) at once.
    """

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        non_retryable: bool = False,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.non_retryable = non_retryable
        self.details = details


class ActivityError(Exception):
    """An activity failed for good (its retries are exhausted or it is not retryable)."""

    def __init__(self, activity_name: str, attempt: int, failure: Failure) -> None:
        super().__init__(
            f"activity {activity_name!r} failed at attempt {attempt}: {failure.message}"
        )
        self.activity_name = activity_name
        self.attempt = attempt
        self.failure = failure


class ChildWorkflowError(Exception):
    """A child workflow did not start, or closed other than COMPLETED."""

    def __init__(
        self, child_execution_id: str, status: ExecutionStatus | None, failure: Failure | None
    ) -> None:
        what = status.value if status else "could not start"
        reason = f": {failure.message}" if failure else ""
        super().__init__(f"child workflow {child_execution_id!r} {what}{reason}")
        self.child_execution_id = child_execution_id
        self.status = status
        self.failure = failure


class WorkflowCancelledError(asyncio.CancelledError):
    """Raised where workflow code waits when its execution is asked to cancel."""


class NondeterminismError(RuntimeError):
    """The code took another path than its recorded history; the workflow task fails."""


class ContinueAsNewRequest(BaseException):
    """Raised by `workflow.continue_as_new`; ends the run as CONTINUED_AS_NEW."""

    def __init__(self, input: Any, workflow_name: str | None) -> None:
        super().__init__("continue as new")
        self.input = input
        self.workflow_name = workflow_name


def failure_of(exc: BaseException) -> Failure:
    """An exception as the failure recorded in the history."""
    if isinstance(exc, ApplicationError):
        return Failure(
            message=exc.message, type=exc.type or type(exc).__name__, details=exc.details
        )
    if isinstance(exc, ActivityError | ChildWorkflowError):
        return Failure(message=str(exc), type=type(exc).__name__)
    return Failure(message=str(exc) or type(exc).__name__, type=type(exc).__name__)
