"""Follow every event of every execution straight from Kafka, exactly once per event.

    RUNSTORE_KAFKA_BOOTSTRAP=127.0.0.1:9092 python examples/subscriber.py

Delivery on `workflows.events` is at least once (an engine that crashes between publishing
and committing its offsets publishes the same commit again), and ordered per execution.
So a subscriber keeps, per execution, the last position `(seq, index)` it applied and
skips anything at or below it. Keep that map where you keep your own state (here: memory).
"""

from __future__ import annotations

import os

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker

from schemas.events import Event

BOOTSTRAP = os.environ.get("RUNSTORE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
PREFIX = os.environ.get("RUNSTORE_TOPIC_PREFIX", "")

broker = KafkaBroker(BOOTSTRAP)
applied: dict[str, tuple[int, int]] = {}  # execution id → last (seq, index) applied


# ACK: the offset is committed after the handler returns, so a crash re-delivers, and the
# position check above turns the re-delivery into a no-op.
@broker.subscriber(
    f"{PREFIX}workflows.events",
    group_id="example-subscriber",
    auto_offset_reset="earliest",
    ack_policy=AckPolicy.ACK,
)
async def on_event(event: Event) -> None:
    position = (event.seq, event.index)
    if position <= applied.get(event.execution_id, (0, -1)):
        return  # seen already
    applied[event.execution_id] = position
    print(f"{event.execution_id} #{event.seq}.{event.index} {event.type.value}")


app = FastStream(broker)

if __name__ == "__main__":
    import asyncio

    asyncio.run(app.run())
