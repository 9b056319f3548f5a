"""The run-list budget against the real MongoDB-protocol server and through the HTTP API: a
list past its budget is stopped and answered 503 with Retry-After; point reads still answer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.api.list_budget import BoundedLists, ListBudgetExceeded
from services.common.readmodels.mongo_reader import MongoReadModelReader
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.readmodels.run_filter import RunFilter
from services.projector.projector import Projector
from tests.support.stack import StackWith
from tests.support.workloads import Workload


async def test_the_store_stops_a_list_past_its_budget(mongo_db: Any) -> None:
    w = Workload()
    for name in ("a", "b", "c"):
        w.start(name)
    await Projector(MongoReadModelStore(mongo_db)).apply(w.all_events())

    roomy = BoundedLists(MongoReadModelReader(mongo_db), concurrency=1, seconds=30)
    assert len(await roomy.list_runs(RunFilter(), None, 10)) == 3
    # No time left: pymongo gives up (and the server would stop at maxTimeMS) — a
    # 503 for the caller, not a hang and not another error.
    spent = BoundedLists(MongoReadModelReader(mongo_db), concurrency=1, seconds=1e-6)
    with pytest.raises(ListBudgetExceeded, match="list_timeout"):
        await spent.list_runs(RunFilter(), None, 10)


def test_a_list_past_its_budget_answers_503_with_retry_after(stack_with: StackWith) -> None:
    # Lists from the store (the in-memory index would answer without it).
    with stack_with(
        services=("api",),
        RUNSTORE_API_LIST_INDEX="store",
        RUNSTORE_API_LIST_TIMEOUT_SECONDS="0.000001",
    ) as stack:
        headers = {"Authorization": "Bearer test-key"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as client:
            listed = client.get("/v1/workflows/runs")
            assert listed.status_code == 503, listed.text
            assert listed.headers["retry-after"] == "1"
            assert listed.json()["detail"].startswith("list_timeout: ")
            # Point reads have no such budget: an unknown execution is a plain 404.
            point = client.get("/v1/workflows/executions/no-such-execution")
            assert point.status_code == 404, point.text
