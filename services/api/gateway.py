"""Publishes commands and waits for the engine's outcome of each, so that an HTTP
answer tells the truth about what happened to the command.

Every API instance tails all partitions of `workflows.outcomes` from the end (no
consumer group: each instance needs every outcome it may be waiting for; through the
API's one `TopicFeed`) and resolves the waiter registered under the outcome's command id.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError

from schemas.commands import Command
from schemas.outcomes import CommandOutcome
from services.api.command_window import WindowedPublisher
from services.api.topic_tail import TopicFeed, resolve_waiters
from services.common import tracing
from services.common.kafka_io import Outgoing
from services.common.settings import ApiSettings


class OutcomeTimeout(Exception):
    """The engine did not answer in time; the command may still be applied later."""


class PublishFailed(Exception):
    """The command could not be written to `workflows.commands`: it was not applied."""


class CommandGateway:
    def __init__(self, settings: ApiSettings, feed: TopicFeed) -> None:
        self._settings = settings
        self._publisher: WindowedPublisher | None = None
        self._topics = settings.topics
        self._waiting: dict[str, asyncio.Future[CommandOutcome]] = {}
        # Recently accepted outcomes by command id: a client retrying with its idempotency
        # key is answered at once, without another round through Kafka and the engine.
        self._accepted: OrderedDict[str, CommandOutcome] = OrderedDict()
        feed.follow(self._topics.outcomes, self._resolve)

    async def start(self) -> None:
        """Starts the producer; outcomes come once the feed given at construction starts."""
        # The window lets the commands of concurrent requests share a produce request
        # (each request costs the broker far more than a record in it); it ends once no
        # request came for the quiet time, or at the linger (command_window.py).
        self._publisher = WindowedPublisher(
            self._settings,
            "runstore-api",
            self._settings.api_publish_linger_ms,
            self._settings.api_publish_quiet_ms,
        )
        await self._publisher.start()

    async def stop(self) -> None:
        if self._publisher is not None:
            await self._publisher.stop()

    def _resolve(self, _partition: int, records: Sequence[Any]) -> None:
        resolve_waiters(records, CommandOutcome, _command_id, self._waiting)

    async def _publish(self, command: Command, encoded: bytes | None) -> None:
        if self._publisher is None:
            raise RuntimeError("CommandGateway.start() was not called")
        if encoded is None:
            encoded = command.__pydantic_serializer__.to_json(command)
        with tracing.producing(
            f"send {command.type}",
            self._topics.commands,
            {
                "runstore.execution_id": command.execution_id,
                "runstore.command_id": command.command_id,
            },
        ) as headers:
            await self._publisher.publish(
                [Outgoing(self._topics.commands, command.execution_id, encoded, headers)]
            )

    async def publish(self, records: list[Outgoing]) -> None:
        """Publish records other than commands (query and update tasks) with the same
        producer; raises KafkaError."""
        if self._publisher is None:
            raise RuntimeError("CommandGateway.start() was not called")
        await self._publisher.publish(records)

    def expect(self, command_id: str) -> asyncio.Future[CommandOutcome]:
        """A future for the outcome of a command someone else publishes (a worker's update
        task): register it BEFORE the command can be published; `forget` it after."""
        waiter = self._waiting.get(command_id)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[command_id] = waiter
        return waiter

    def forget(self, command_id: str) -> None:
        self._waiting.pop(command_id, None)

    async def send(
        self,
        command: Command,
        wait_seconds: float | None = None,
        encoded: bytes | None = None,
    ) -> CommandOutcome:
        """Publish `command` (as `encoded`, when the caller encoded it already) and return
        its outcome; OutcomeTimeout if none comes in time.

        Concurrent sends of one command id (client retries) share a single wait.
        """
        known = self._accepted.get(command.command_id)
        if known is not None and known.execution_id == command.execution_id:
            return known
        waiter = self._waiting.get(command.command_id)
        owner = waiter is None
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[command.command_id] = waiter
        try:
            try:
                # (`timeout` rather than `wait_for`: no extra task per request.)
                async with asyncio.timeout(self._settings.api_command_timeout_seconds):
                    await self._publish(command, encoded)
            except TimeoutError as exc:
                # Unacknowledged, not refused: the record may still reach the topic.
                raise OutcomeTimeout(
                    f"Kafka did not acknowledge command {command.command_id} within "
                    f"{self._settings.api_command_timeout_seconds:g}s; it may still be applied"
                ) from exc
            except KafkaError as exc:
                raise PublishFailed(
                    f"could not publish command {command.command_id}: {exc}"
                ) from exc
            limit = (
                wait_seconds
                if wait_seconds is not None
                else self._settings.api_command_timeout_seconds
            )
            try:
                async with asyncio.timeout(limit):
                    # Shielded: a concurrent send of the same command shares the waiter.
                    outcome = await asyncio.shield(waiter)
            except TimeoutError as exc:
                raise OutcomeTimeout(
                    f"the engine did not answer command {command.command_id} within "
                    f"{limit:g}s; it may still be applied"
                ) from exc
        finally:
            if owner:
                self._waiting.pop(command.command_id, None)
        if outcome.accepted:
            self._accepted[command.command_id] = outcome
            self._accepted.move_to_end(command.command_id)
            while len(self._accepted) > self._settings.api_outcome_memory:
                self._accepted.popitem(last=False)
        return outcome


def _command_id(outcome: CommandOutcome) -> str:
    return outcome.command_id
