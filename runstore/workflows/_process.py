"""The worker as a process: its Kafka consumer of the deployment's tasks (offsets committed
once a batch's commands and replies are acknowledged, at most every
`RUNSTORE_WORKER_COMMIT_EVERY_MS`: services/common/pending_offsets.py), its presence in
the catalogue (registration, heartbeats, deployment stop/restart), log shipping, and
probes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from runstore.workflows._history import RunHistory
from runstore.workflows._worker import Worker, log, user_logger
from schemas.registry import DeploymentDirective, WorkerRegistration, spec_of
from services.common import tracing
from services.common.health import Health, serve_health
from services.common.kafka_topics import ensure_topics
from services.common.metrics import observe_consumed
from services.common.mongo import mongo_client, mongo_database
from services.common.mongo_commit_log import MongoCommitLog
from services.common.pending_offsets import PendingOffsets
from services.common.settings import WorkerSettings
from services.common.worker_registry import (
    ExecutionLogHandler,
    ExecutionLogShipper,
    WorkerRegistry,
)


async def serve(worker: Worker) -> None:
    """Run `worker` as a process until it is stopped."""
    settings = worker.settings
    await ensure_topics(settings)
    client = mongo_client(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        linger_ms=settings.worker_linger_ms,
        acks="all",
        enable_idempotence=True,
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group(f"worker.{worker.deployment}"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.worker_max_batch,
        group_instance_id=settings.worker_instance_id,
        session_timeout_ms=settings.worker_session_timeout_ms,
    )
    await producer.start()
    worker.attach(
        RunHistory(
            MongoCommitLog(mongo_database(client, settings)),
            worker.activities,
            settings.worker_own_command_wait_seconds,
        ),
        producer,
    )
    await consumer.start()
    health = Health(settings, client)
    probes = await serve_health(health, settings.health_host, settings.worker_health_port)
    offsets = PendingOffsets(consumer, settings.worker_commit_every_ms / 1000)
    listener = _ForgetOnRevoke(worker, health, offsets)
    consumer.subscribe([settings.topics.tasks], listener=listener)
    db = mongo_database(client, settings)
    registration = registration_of(worker)
    seen_generation: int | None = None

    async def obey(directive: DeploymentDirective) -> None:
        # A stopped deployment pauses dispatch; a restart makes its workers rejoin.
        nonlocal seen_generation
        if directive.stopped:
            consumer.pause(*consumer.assignment())
        else:
            consumer.resume(*consumer.paused())
        if seen_generation is not None and directive.restart_generation > seen_generation:
            log.info("deployment %r restarted: rejoining the group", worker.deployment)
            worker.forget_all()
            consumer.unsubscribe()
            consumer.subscribe([settings.topics.tasks], listener=listener)
        seen_generation = directive.restart_generation

    stop_heartbeats = asyncio.Event()
    heartbeats = asyncio.create_task(
        WorkerRegistry(db).run_heartbeats(registration, obey, stop_heartbeats)
    )
    shipper = ExecutionLogShipper(db, worker_id=worker.worker_id, deployment_name=worker.deployment)
    shipping = asyncio.create_task(shipper.run(1.0))
    handler = ExecutionLogHandler(shipper)
    user_logger.addHandler(handler)
    log.info(
        "worker %s serving deployment %r: workflows %s, activities %s",
        worker.worker_id,
        worker.deployment,
        sorted(worker.workflows),
        sorted(worker.activities),
    )
    try:
        while not worker.stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            records = [r for batch in batches.values() for r in batch]
            if not records:
                await offsets.commit()  # no task waits: commit what was handled
                continue
            observe_consumed(f"worker.{worker.deployment}", consumer, records)
            try:
                await worker.handle(
                    [r.value for r in records],
                    [r.headers for r in records] if tracing.tracer() else None,
                )
            except Exception:
                # Nothing of this batch is acknowledged: take it again from the last
                # committed offsets after a pause (replay makes a second pass safe).
                log.exception("a batch of tasks failed; retrying it")
                await asyncio.sleep(1.0)
                await offsets.commit()  # the batches handled before it are done
                await consumer.seek_to_committed()
                continue
            # Only the partitions this batch read: a commit of every assigned partition
            # writes one offset record per partition, most of them unchanged.
            offsets.add({tp: batch[-1].offset + 1 for tp, batch in batches.items()})
            await offsets.commit_if_due()
    finally:
        await worker.executor.close(settings.worker_shutdown_grace_seconds)
        stop_heartbeats.set()
        user_logger.removeHandler(handler)
        shipping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await heartbeats
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await shipping
        if probes is not None:
            probes.close()
        await health.close()
        await offsets.commit()
        await consumer.stop()
        await producer.stop()
        await client.close()


def registration_of(worker: Worker) -> WorkerRegistration:
    """What this worker tells the catalogue: who it is and what it serves."""
    return WorkerRegistration(
        worker_id=worker.worker_id,
        deployment_name=worker.deployment,
        host=socket.gethostname(),
        pid=os.getpid(),
        version=worker.settings.worker_version,
        workflows=[
            spec_of(
                d.name,
                d.run_method,
                display_name=d.display_name,
                description=d.description,
            )
            for d in worker.workflows.values()
        ],
        heartbeat_interval_seconds=worker.settings.worker_heartbeat_seconds,
    )


class _ForgetOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Another worker may advance the executions of a revoked partition: cached instances
    are dropped (a later task rebuilds them from the history), and the offsets of tasks
    handled so far are committed while this worker still owns them."""

    def __init__(self, worker: Worker, health: Health, offsets: PendingOffsets) -> None:
        self.worker = worker
        self.health = health
        self.offsets = offsets

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.worker.forget_all()
        await self.offsets.revoke(revoked)

    async def on_partitions_assigned(self, assigned: object) -> None:
        self.health.assigned()


def run_worker(
    workflows: Sequence[type],
    activities: Sequence[Any] = (),
    *,
    deployment_name: str | None = None,
    settings: WorkerSettings | None = None,
) -> None:
    """Run a worker in this process until SIGINT/SIGTERM."""
    worker = Worker(workflows, activities, deployment_name=deployment_name, settings=settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    # uvloop, as the API runs under: the worker's own work per task is small next to the
    # event loop's (sockets, timers, callbacks), which uvloop does in C.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
