"""Writes docs/asyncapi.json: every Kafka topic Runstore uses, with its message schema.

    .venv/bin/python examples/gen_asyncapi.py [--out docs/asyncapi.json]

The channels are declared on a FastStream broker that never connects (publishers for the
topics services write, subscribers for those they read) and rendered with FastStream's
AsyncAPI generator — what `faststream docs gen` does, without the CLI extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faststream.kafka import KafkaBroker  # noqa: E402
from faststream.specification import AsyncAPI  # noqa: E402
from pydantic import Field  # noqa: E402

from schemas.commands import Command  # noqa: E402
from schemas.events import Event  # noqa: E402
from schemas.outcomes import CommandOutcome  # noqa: E402
from schemas.replies import WorkerReply  # noqa: E402
from schemas.tasks import WorkflowTask  # noqa: E402
from services.common.settings import Topics  # noqa: E402

KEY = "Record key: the execution id (UTF-8). All records of one execution share a partition."


def build() -> AsyncAPI:
    topics = Topics.with_prefix("")
    broker = KafkaBroker("localhost:9092", description="Runstore's Kafka topics")

    @broker.subscriber(
        topics.commands,
        title="workflows.commands",
        description=(
            "Commands for the engine (consumer group `engine`): StartWorkflow, "
            "CancelExecution, TerminateExecution, SignalExecution, ResetExecution, worker "
            "reports (CompleteWorkflowTask, FailWorkflowTask, …), timer firings (FireTimer, "
            "…) and the engine's derived commands (RecordChildWorkflow, children's starts); "
            "`type` selects the payload. A `command_id` is applied "
            f"at most once; its outcome appears on workflows.outcomes. {KEY}"
        ),
    )
    async def engine(command: Annotated[Command, Field(discriminator="type")]) -> None: ...

    @broker.subscriber(
        topics.events,
        title="workflows.events",
        description=(
            "Every stored event, in commit order per execution (published after the commit "
            "is stored). Position `(seq, index)`; `event_id` = `{execution_id}:{seq}:{index}`. "
            "Delivery is at least once: deduplicate by (execution_id, seq, index) and ignore "
            "positions at or below the last one applied. Includes Runstore's own event types "
            "(terminated, timed out, signaled, retry scheduled/started, run reset); see "
            f"docs/streams.md. {KEY}"
        ),
    )
    async def projector(event: Annotated[Event, Field(discriminator="type")]) -> None: ...

    broker.publisher(
        topics.outcomes,
        title="workflows.outcomes",
        description=(
            "One outcome per command id: accepted (with the commit seq, run id and status) "
            f"or rejected with a machine-readable code. {KEY}"
        ),
        schema=CommandOutcome,
    )
    broker.publisher(
        topics.tasks,
        title="workflows.tasks",
        description=(
            "Work for workers (docs/worker-protocol.md): run, signal and stop tasks derived "
            "from events by the engine; query and update tasks published by the API. "
            f"`deployment_name` routes a task to the workers of that deployment. {KEY}"
        ),
        schema=WorkflowTask,
    )

    @broker.subscriber(
        topics.replies,
        title="workflows.replies",
        description=(
            "Workers' answers to query and update tasks, correlated by `request_id`; every "
            f"API instance reads all partitions. {KEY}"
        ),
    )
    async def api_replies(reply: WorkerReply) -> None: ...

    broker.publisher(
        topics.dlq,
        title="workflows.commands.dlq",
        description=(
            "Records of workflows.commands that are not valid commands, unchanged, with "
            "headers x-dlq-reason (empty, too_large, invalid_json, unknown_type, "
            "schema_violation, key_mismatch), x-dlq-error, x-dlq-source-topic, "
            "x-dlq-source-partition, x-dlq-source-offset."
        ),
        schema=bytes,
    )
    return AsyncAPI(
        broker,
        title="Runstore",
        version="0.1.0",
        description=(
            "Durable workflow execution: commands in, events out, all keyed by execution id. "
            "Topic names take RUNSTORE_TOPIC_PREFIX in front when it is set."
        ),
        schema_version="3.0.0",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "asyncapi.json")
    args = parser.parse_args()
    spec = build().to_specification()
    text = json.dumps(json.loads(spec.to_json()), indent=2, sort_keys=False) + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
