"""What a worker sends on Kafka: a workflow task's report (`CompleteWorkflowTask`) or its
failure (`FailWorkflowTask`), a detached activity attempt's outcome
(`RecordActivityTask`), and query/update replies. Command ids derive from what the
command reports, so a repeated command is applied once (docs/worker-protocol.md)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from runstore.workflows._activities import Attempt, Outcome, activity_outcome
from runstore.workflows._activity_machine import stage_after
from runstore.workflows._definitions import to_json
from runstore.workflows._errors import failure_of
from runstore.workflows._instance import WorkflowInstance
from runstore.workflows._task_spans import command_headers
from schemas.commands import (
    ActivityReportPayload,
    CompleteWorkflowTask,
    CompleteWorkflowTaskPayload,
    FailWorkflowTask,
    FailWorkflowTaskPayload,
    RecordActivityTask,
)
from schemas.common import Failure
from services.common.metrics import ACTIVITIES
from services.common.settings import WorkerSettings

log = logging.getLogger("runstore.worker")

_REPORT_TRIES = 6


class Reporter:
    def __init__(self, settings: WorkerSettings, worker_id: str, deployment: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.deployment = deployment
        self.producer: AIOKafkaProducer | None = None
        """Set by the running process (`_process.serve`)."""

    async def send(self, topic: str, key: str, model: Any) -> None:
        """Hand a record to the producer (acknowledged by the batch's `flush`)."""
        assert self.producer is not None, "the worker is not running"
        await self.producer.send(
            topic,
            key=key.encode(),
            value=model.model_dump_json().encode(),
            headers=command_headers(),
        )

    async def flush(self) -> None:
        assert self.producer is not None, "the worker is not running"
        await self.producer.flush()

    async def complete_task(self, instance: WorkflowInstance, command_id: str | None) -> bool:
        """Report the steps taken since the last report, computed from the history up to
        `applied_seq`; the command id derives from that, so a redelivered task that
        computes the same report is applied once. False if there was nothing to report."""
        steps = instance.take_steps()
        if not steps:
            return False
        task_seq = instance.applied_seq
        command_id = command_id or f"wft:{instance.run_id}:{task_seq}"
        command = CompleteWorkflowTask(
            command_id=command_id,
            execution_id=instance.execution_id,
            issued_at=datetime.now(UTC),
            payload=CompleteWorkflowTaskPayload(
                run_id=instance.run_id,
                task_seq=task_seq,
                worker_id=self.worker_id,
                steps=steps,
            ),
        )
        await self.send(self.settings.topics.commands, instance.execution_id, command)
        instance.last_command_id = command_id
        instance.last_steps = steps
        return True

    async def fail_task(
        self, execution_id: str, run_id: str, task_seq: int, failure: Failure
    ) -> None:
        command = FailWorkflowTask(
            command_id=f"wft-fail:{run_id}:{task_seq}",
            execution_id=execution_id,
            issued_at=datetime.now(UTC),
            payload=FailWorkflowTaskPayload(
                run_id=run_id, task_seq=task_seq, failure=failure, worker_id=self.worker_id
            ),
        )
        await self.send(self.settings.topics.commands, execution_id, command)

    async def report_activity(self, attempt: Attempt, outcome: Outcome) -> None:
        """A detached attempt ended: its outcome as its own command, acknowledged by Kafka
        before this returns. If Kafka stays unreachable the report is dropped (logged):
        the attempt's deadline timer then times it out and the policy retries it."""
        command = activity_report(attempt, outcome)
        ACTIVITIES.labels(self.deployment, activity_outcome(outcome[1])).inc()
        assert self.producer is not None, "the worker is not running"
        for n in range(_REPORT_TRIES):
            try:
                await self.producer.send_and_wait(
                    self.settings.topics.commands,
                    key=command.execution_id.encode(),
                    value=command.model_dump_json().encode(),
                )
                return
            except KafkaError as exc:
                log.warning("report of %s failed (%s); retrying", command.command_id, exc)
                await asyncio.sleep(0.5 * 2**n)
        log.error("report of %s dropped: its deadline will time it out", command.command_id)


def activity_report(attempt: Attempt, outcome: Outcome) -> RecordActivityTask:
    """RecordActivityTask for an attempt's outcome; the stage follows its retry policy."""
    info, request = attempt.info, attempt.request
    result, error = outcome
    value: Any = None
    if error is None:
        try:
            value = to_json(result)
        except Exception as exc:  # a result that is not JSON fails the attempt
            error = exc
    failure = None if error is None else failure_of(error)
    return RecordActivityTask(
        command_id=f"activity:{info.run_id}:{info.activity_id}:{info.attempt}",
        execution_id=info.execution_id,
        issued_at=datetime.now(UTC),
        payload=ActivityReportPayload(
            run_id=info.run_id,
            stage=stage_after(request.retry_policy, info.attempt, failure, error),
            task_id=info.activity_id,
            activity_name=info.activity_name,
            attempt=info.attempt,
            result=value,
            failure=failure,
        ),
    )
