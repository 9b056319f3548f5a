"""`runstore-echo`: returns its input unchanged (the smallest workflow there is)."""

from __future__ import annotations

from typing import Any

from runstore.workflows import activity, workflow


@activity
async def echo_activity(value: Any) -> Any:
    return value


@workflow.define(name="runstore-echo", description="Returns its input unchanged.")
class Echo:
    @workflow.run
    async def run(self, value: Any) -> Any:
        return await echo_activity(value)
