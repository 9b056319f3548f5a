"""The Restate service of the Restate peer: a workflow of one durable step (`ctx.run`),
served over HTTP/2 by hypercorn for the Restate server to invoke:

    python -m hypercorn --bind 127.0.0.1:<port> peers.restate_service:app
"""

from __future__ import annotations

import restate

bench = restate.Workflow("BenchWorkflow")


@bench.main()
async def run(ctx: restate.WorkflowContext, payload: dict[str, int]) -> int:
    async def step() -> int:
        return payload["n"] + 1

    return await ctx.run_typed("step", step)


app = restate.app([bench])
