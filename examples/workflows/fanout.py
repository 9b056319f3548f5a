"""A fan-out of child workflows: one `runstore-echo` child per item, results gathered.

Input: {"items": [1, 2, 3]}. Each child carries this run as parent and root, so
`list_runs(root_execution_id=…)` lists the whole tree.
"""

from __future__ import annotations

import asyncio
from typing import Any

from examples.workflows.echo import Echo
from runstore.workflows import workflow


@workflow.define(name="fan-out", description="Runs one child workflow per item.")
class FanOut:
    @workflow.run
    async def run(self, job: dict[str, Any]) -> dict[str, Any]:
        items = list(job.get("items", []))
        results = await asyncio.gather(
            *(workflow.execute_child_workflow(Echo, item) for item in items)
        )
        return {"results": list(results)}
