"""Creates the topics Runstore needs, with explicit partition counts."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from services.common.settings import RunstoreSettings

log = logging.getLogger(__name__)


async def ensure_topics(settings: RunstoreSettings) -> None:
    """Create missing topics; existing ones are left as they are.

    Every topic is keyed by execution_id, so all of one execution's records share a
    partition; the DLQ gets the same count so it can be replayed with the same keys.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in settings.topics.all() if name not in existing]
        if not missing:
            return
        # Another service may create them first: that is fine.
        with suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=settings.partitions,
                        replication_factor=settings.topic_replication_factor,
                    )
                    for name in missing
                ]
            )
        log.info("created topics %s", missing)
    finally:
        await admin.close()


async def partitions_of(settings: RunstoreSettings, topic: str) -> list[int]:
    """The partition numbers of `topic`, waiting briefly for a just-created topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        for _ in range(100):
            described = await admin.describe_topics([topic])
            found = [p["partition"] for d in described for p in d.get("partitions", [])]
            if found:
                return sorted(found)
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise RuntimeError(f"topic {topic} has no partitions")
