"""Start a workflow and signal it by writing commands to Kafka, then read their outcomes.

RUNSTORE_KAFKA_BOOTSTRAP=127.0.0.1:9092 python examples/producer.py
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

BOOTSTRAP = os.environ.get("RUNSTORE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
PREFIX = os.environ.get("RUNSTORE_TOPIC_PREFIX", "")


def command(kind: str, execution_id: str, **payload: object) -> dict[str, object]:
    return {
        "type": kind,
        "command_id": str(uuid.uuid4()),  # reuse it on a retry: applied at most once
        "execution_id": execution_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "user_id": "billing-service",
        "payload": payload,
    }


async def main() -> None:
    execution_id = f"invoice-{uuid.uuid4().hex[:8]}"
    commands = [
        command("StartWorkflow", execution_id, workflow_name="invoice", input={"amount": 12}),
        command("SignalExecution", execution_id, name="approve", input={"by": "ada"}),
    ]
    outcomes = AIOKafkaConsumer(f"{PREFIX}workflows.outcomes", bootstrap_servers=BOOTSTRAP)
    await outcomes.start()  # from the end: only outcomes of what we send now
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True)
    await producer.start()
    try:
        for c in commands:  # key = execution id: one partition, applied in this order
            await producer.send_and_wait(
                f"{PREFIX}workflows.commands", json.dumps(c).encode(), key=execution_id.encode()
            )
        waiting = {c["command_id"] for c in commands}
        async for record in outcomes:
            outcome = json.loads(record.value)
            if outcome["command_id"] in waiting:
                waiting.discard(outcome["command_id"])
                print(
                    outcome["command_type"], "accepted" if outcome["accepted"] else outcome["code"]
                )
            if not waiting:
                break
    finally:
        await producer.stop()
        await outcomes.stop()


if __name__ == "__main__":
    asyncio.run(main())
