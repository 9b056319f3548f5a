"""The Runstore worker SDK: write workflows and activities in Python, run them durably.

    from runstore.workflows import workflow, activity, Worker

    @activity
    async def charge(order_id: str) -> str: ...

    @workflow.define(name="order")
    class Order:
        @workflow.run
        async def run(self, order_id: str) -> str:
            return await workflow.execute_activity(charge, order_id)

See docs/workers.md for determinism rules, failure semantics and deployment routing.
"""

from runstore.workflows._api import (
    ActivityInfo,
    ChildHandle,
    activity,
    activity_heartbeat,
    workflow,
)
from runstore.workflows._definitions import RetryPolicy
from runstore.workflows._errors import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    NondeterminismError,
    WorkflowCancelledError,
)
from runstore.workflows._process import run_worker
from runstore.workflows._worker import Worker
from schemas.common import ParentClosePolicy

__all__ = [
    "ActivityError",
    "ActivityInfo",
    "ApplicationError",
    "ChildHandle",
    "ChildWorkflowError",
    "NondeterminismError",
    "ParentClosePolicy",
    "RetryPolicy",
    "Worker",
    "WorkflowCancelledError",
    "activity",
    "activity_heartbeat",
    "run_worker",
    "workflow",
]
