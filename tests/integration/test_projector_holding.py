"""The projector process holding back just-started executions (services/projector/
holding.py), on real Kafka and FerretDB: what it holds is written once its time is up, with
its offsets committed; a projector SIGKILLed while it holds events loses nothing, because
its committed offset stays before them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from pymongo.asynchronous.database import AsyncDatabase

from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.readmodels.store import EXECUTIONS, RUNS
from tests.support.eventually import assert_eventually
from tests.support.kafka import produce
from tests.support.stack import Stack
from tests.support.workloads import Workload, store_commits

Db = AsyncDatabase[dict[str, Any]]


async def committed_offsets(env: dict[str, str]) -> dict[int, int]:
    """The projector group's committed offsets on the events topic, by partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=env["RUNSTORE_KAFKA_BOOTSTRAP"])
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(f"{env['RUNSTORE_TOPIC_PREFIX']}projector")
    finally:
        await admin.close()
    topic = f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.events"
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


async def produce_events(env: dict[str, str], w: Workload) -> None:
    await produce(
        env["RUNSTORE_KAFKA_BOOTSTRAP"],
        f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.events",
        [(e.execution_id, e.model_dump_json().encode()) for e in w.all_events()],
    )


async def test_held_events_are_written_and_committed_once_their_time_is_up(
    isolated: dict[str, str], tmp_path: Path, mongo_db: Db, models_db: Db
) -> None:
    w = Workload()
    w.start("open-1")  # started, never closed: held, then written by the background task
    w.start("open-2")
    await store_commits(mongo_db, w)
    env = {**isolated, "RUNSTORE_PROJECTOR_HOLD_MS": "500"}
    stack = Stack(env=env, log_dir=tmp_path)
    stack.start("projector")
    try:
        await produce_events(env, w)

        async def written_and_committed() -> None:
            runs = await MongoReadModelStore(models_db).snapshot(RUNS)
            assert {r["execution_id"] for r in runs.values()} == {"open-1", "open-2"}
            assert sum((await committed_offsets(env)).values()) == len(w.all_events())

        await assert_eventually(written_and_committed, timeout=60)
    finally:
        stack.stop_all()


async def test_a_projector_killed_while_holding_loses_nothing(
    isolated: dict[str, str], tmp_path: Path, mongo_db: Db, models_db: Db
) -> None:
    w = Workload()
    w.start("held")
    await store_commits(mongo_db, w)
    events = w.all_events()
    # Held for 10 minutes: the test kills the projector long before it would write them.
    env = {**isolated, "RUNSTORE_PROJECTOR_HOLD_MS": "600000"}
    stack = Stack(env=env, log_dir=tmp_path)
    stack.start("projector")
    try:
        await produce_events(env, w)
        partition = None

        async def consumed_and_held() -> None:
            # The projector commits the offset of the first held event once it has the
            # batch: proof it consumed the events, and that its commit stops before them.
            nonlocal partition
            offsets = await committed_offsets(env)
            assert offsets, "nothing committed yet"
            (partition,) = offsets
            assert offsets[partition] == 0

        await assert_eventually(consumed_and_held, timeout=60)
        assert await MongoReadModelStore(models_db).snapshot(RUNS) == {}
        stack.kill("projector")

        stack.start("projector", env={"RUNSTORE_PROJECTOR_HOLD_MS": "0"})

        async def written() -> None:
            store = MongoReadModelStore(models_db)
            assert set(await store.snapshot(EXECUTIONS)) == {"held"}
            offsets = await committed_offsets(env)
            assert offsets[partition] == len(events)

        await assert_eventually(written, timeout=60)
    finally:
        stack.stop_all()
