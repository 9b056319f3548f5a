"""A temporalio worker for bench/workers.py: the same one-activity workflow, on the task
queue `bench-wf` of the Temporal server at argv[1]."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker


@activity.defn
async def bench_activity(payload: dict[str, Any]) -> int:
    return int(payload.get("n", 0)) + 1


@workflow.defn(name="BenchOneActivity")
class BenchOneActivity:
    @workflow.run
    async def run(self, payload: dict[str, Any]) -> int:
        return int(
            await workflow.execute_activity(
                bench_activity, payload, start_to_close_timeout=timedelta(seconds=30)
            )
        )


async def main(address: str) -> None:
    client = await Client.connect(address, namespace="default")
    worker = Worker(
        client, task_queue="bench-wf", workflows=[BenchOneActivity], activities=[bench_activity]
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
