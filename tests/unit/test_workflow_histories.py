"""Recorded runs of the example workflows (tests/unit/histories/workflows/*.json) replay
with today's SDK and code; changed code that takes another path fails loudly.

A replay runs no activity: every result comes from the history. To add a history, see
tests/unit/histories/workflows/record_workflows.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from examples.workflows import approval, order_saga
from runstore.workflows import NondeterminismError, Worker, activity, workflow
from runstore.workflows._instance import WorkflowInstance
from schemas.events import EVENT_LIST_ADAPTER, Event

HISTORIES = Path(__file__).parent / "histories" / "workflows"
WORKER = Worker(
    [order_saga.OrderSaga, approval.Approval],
    [
        order_saga.reserve_stock,
        order_saga.charge_card,
        order_saga.ship,
        order_saga.release_stock,
        order_saga.refund,
    ],
)
RUNS: list[str] = []


def _load(name: str) -> tuple[str, list[Event]]:
    document: dict[str, Any] = json.loads((HISTORIES / f"{name}.json").read_text())
    return document["workflow"], EVENT_LIST_ADAPTER.validate_python(document["events"])


def _replay(worker: Worker, workflow_name: str, events: list[Event]) -> WorkflowInstance:
    started: Any = events[0]
    instance = WorkflowInstance(
        worker.workflows[workflow_name],
        execution_id=started.execution_id,
        run_id=started.run_id,
        input=started.attributes.input.value,
        attempt=1,
        activities=worker.activities,
        started_ns=started.timestamp_ns,
    )
    instance.apply(events)
    return instance


@pytest.mark.parametrize(
    "name", ["order_saga_compensated", "order_saga_shipped", "approval_two_signals"]
)
def test_a_recorded_run_replays_to_its_end_without_running_activities(name: str) -> None:
    workflow_name, events = _load(name)
    instance = _replay(WORKER, workflow_name, events)
    assert instance.finished
    assert instance.take_activity_requests() == []


def test_the_replayed_saga_knows_what_it_compensated() -> None:
    workflow_name, events = _load("order_saga_compensated")
    instance = _replay(WORKER, workflow_name, events)
    assert instance.query("progress", None) == {
        "done": ["reservation-o-1", "charge-o-1"],
        "compensations": ["refunded charge-o-1", "released reservation-o-1"],
    }


@activity(name="reserve_stock")
async def reserve_everything(order: dict[str, Any]) -> str:
    RUNS.append("reserve")
    return "all"


@activity(name="notify")
async def notify(order: dict[str, Any]) -> str:
    RUNS.append("notify")
    return "sent"


@workflow.define(name="order-saga")
class SagaThatNotifiesFirst:
    """The saga after a careless change: it sends a notification before reserving."""

    @workflow.run
    async def run(self, order: dict[str, Any]) -> str:
        await notify(order)
        return str(await reserve_everything(order))


def test_changed_code_fails_the_replay_of_a_recorded_run_and_runs_nothing() -> None:
    workflow_name, events = _load("order_saga_shipped")
    changed = Worker([SagaThatNotifiesFirst], [notify, reserve_everything])
    with pytest.raises(NondeterminismError, match="notify"):
        _replay(changed, workflow_name, events)
    assert RUNS == []
