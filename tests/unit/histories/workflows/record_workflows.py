"""Records the workflow histories that tests/unit/test_workflow_histories.py replays.

    .venv/bin/python -m tests.unit.histories.workflows.record_workflows

Each file is the event stream of one run of an example workflow (examples/workflows/), as
the real domain stored it while the worker SDK ran the code (tests/support/workflow_sim.py).
Re-record only when a history is meant to change; a replay test that fails after a change
of the SDK means recorded runs in production would fail too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from examples.workflows import approval, order_saga
from schemas.events import EVENT_LIST_ADAPTER
from tests.support.workflow_sim import WorkflowSim

HERE = Path(__file__).parent
SAGA_ACTIVITIES = [
    order_saga.reserve_stock,
    order_saga.charge_card,
    order_saga.ship,
    order_saga.release_stock,
    order_saga.refund,
]


async def record() -> dict[str, Any]:
    histories: dict[str, Any] = {}

    saga = WorkflowSim([order_saga.OrderSaga], SAGA_ACTIVITIES)
    saga.start("order-saga", {"order_id": "o-1", "amount": 3, "fail_at": "ship"})
    await saga.run_to_end()
    histories["order_saga_compensated"] = saga

    shipped = WorkflowSim([order_saga.OrderSaga], SAGA_ACTIVITIES)
    shipped.start("order-saga", {"order_id": "o-2", "amount": 3, "wait_seconds": 5})
    await shipped.run_to_end()
    histories["order_saga_shipped"] = shipped

    vote = WorkflowSim([approval.Approval])
    vote.start("approval", {"request": "laptop", "approvers_needed": 2})
    vote.signal("approve", {"by": "ann"})
    await vote.task()
    vote.signal("approve", {"by": "bob"})
    await vote.task()
    histories["approval_two_signals"] = vote

    return {
        name: {
            "workflow": sim.state.workflow_name if sim.state else None,
            "status": sim.state.status.value if sim.state else None,
            "events": json.loads(EVENT_LIST_ADAPTER.dump_json(sim.events)),
        }
        for name, sim in histories.items()
    }


def main() -> None:
    for name, history in asyncio.run(record()).items():
        (HERE / f"{name}.json").write_text(json.dumps(history, indent=1) + "\n")
        print(f"recorded {name}: {len(history['events'])} events, {history['status']}")


if __name__ == "__main__":
    main()
