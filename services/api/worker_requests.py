"""Queries and updates: request/reply with the workers over Kafka (docs/worker-protocol.md).

The API publishes a `query` or `update` task on `workflows.tasks` (keyed by execution id,
routed by the run's deployment) and waits for the worker's `WorkerReply` on
`workflows.replies`, which every API instance tails from the end like outcomes (no
consumer group: each instance needs the replies it waits for). An update's result is
returned only once the engine accepted the command that recorded it (`reply.command_id`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from schemas.outcomes import CommandOutcome
from schemas.replies import WorkerReply
from schemas.tasks import WorkflowTask
from services.api.gateway import CommandGateway
from services.api.topic_tail import TopicFeed
from services.common.kafka_io import Outgoing
from services.common.settings import ApiSettings

log = logging.getLogger(__name__)

__all__ = ["NoReply", "WorkerRequests"]


class NoReply(Exception):
    """No worker answered in time (none runs the deployment, or all are busy or down)."""


class WorkerRequests:
    def __init__(self, settings: ApiSettings, gateway: CommandGateway, feed: TopicFeed) -> None:
        self._settings = settings
        self._gateway = gateway
        self._topics = settings.topics
        self._waiting: dict[str, asyncio.Future[WorkerReply]] = {}
        # Replies come once `feed` starts (the API's lifespan starts it).
        feed.follow(self._topics.replies, self._resolve)

    def _resolve(self, _partition: int, records: Sequence[Any]) -> None:
        for record in records:
            if not record.value:
                continue
            try:
                reply = WorkerReply.model_validate_json(record.value)
            except ValidationError:
                log.warning("unreadable reply record ignored")
                continue
            waiter = self._waiting.get(reply.request_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)

    async def ask(self, task: WorkflowTask) -> tuple[WorkerReply, CommandOutcome | None]:
        """Publish a query or update task and wait for its reply (and, for an update that
        recorded a command, that command's outcome); NoReply when the time is up."""
        assert task.request_id is not None
        request_id = task.request_id
        limit = self._settings.api_worker_timeout_seconds
        waiter: asyncio.Future[WorkerReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        # The update's command id is known in advance: wait for its outcome from before
        # the task goes out, so an outcome that beats the reply is not missed.
        command_id = f"update:{request_id}" if task.kind == "update" else None
        outcome = self._gateway.expect(command_id) if command_id else None
        try:
            async with asyncio.timeout(limit):
                await self._gateway.publish(
                    [
                        Outgoing(
                            self._topics.tasks, task.execution_id, task.model_dump_json().encode()
                        )
                    ]
                )
                reply = await waiter
                if outcome is None or not reply.ok or reply.command_id != command_id:
                    return reply, None
                return reply, await asyncio.shield(outcome)
        except TimeoutError as exc:
            raise NoReply(
                f"no worker answered the {task.kind} {task.name!r} to execution "
                f"{task.execution_id!r} within {limit:g}s (is a worker of deployment "
                f"{task.deployment_name or 'default'!r} running?)"
            ) from exc
        finally:
            self._waiting.pop(request_id, None)
            if command_id is not None:
                self._gateway.forget(command_id)
