"""The workflow bench/workers.py runs on Runstore: one activity, its result returned."""

from __future__ import annotations

from typing import Any

from runstore.workflows import activity, workflow


@activity
async def bench_activity(payload: dict[str, Any]) -> int:
    return int(payload.get("n", 0)) + 1


@workflow.define(name="bench-one-activity")
class BenchOneActivity:
    @workflow.run
    async def run(self, payload: dict[str, Any]) -> int:
        return int(await bench_activity(payload))
