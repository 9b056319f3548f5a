"""Drive Runstore with the official `mistralai` SDK: start, signal, watch, list.

RUNSTORE_API_URL=http://127.0.0.1:8080 RUNSTORE_API_KEY=dev python examples/query_client.py

HTTP execute starts only workflows a worker registered (docs/catalogue.md): run a worker
that serves `greeter` first, or start the API with RUNSTORE_API_ALLOW_UNREGISTERED=true.
"""

from __future__ import annotations

import os

from mistralai.client import Mistral

client = Mistral(
    api_key=os.environ.get("RUNSTORE_API_KEY", "dev"),
    server_url=os.environ.get("RUNSTORE_API_URL", "http://127.0.0.1:8080"),
)

started = client.workflows.execute_workflow(workflow_identifier="greeter", input={"name": "Ada"})
print("started", started.execution_id, started.status)

client.workflows.executions.signal_workflow_execution(
    execution_id=started.execution_id, name="approve", input={"by": "ada"}
)
client.workflows.executions.cancel_workflow_execution(execution_id=started.execution_id)

# The stream replays what is stored, follows live events, and ends once the execution closes.
with client.workflows.executions.stream(execution_id=started.execution_id) as stream:
    for item in stream:
        print(item.id, item.data.data.event_type)

page = client.workflows.runs.list_runs(workflow_identifier="greeter", user_id="current")
for run in page.result.executions:
    print(run.execution_id, run.status, run.start_time)
