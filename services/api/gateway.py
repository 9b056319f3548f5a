"""Publishes commands and waits for the engine's outcome of each, so that an HTTP
answer tells the truth about what happened to the command.

Every API instance tails all partitions of `workflows.outcomes` from the end (no
consumer group: each instance needs every outcome it may be waiting for; through the
API's one `TopicFeed`) and resolves the waiter registered under the outcome's command id.
With direct replies on (`RUNSTORE_API_DIRECT_REPLIES`), the commands it waits for also ask
the engine to write their outcomes straight to this instance (services/api/
reply_listener.py): whichever copy comes first resolves the waiter, the other finds none.
With a `started` handler (the run list index's), they also ask for the STARTED event of
each run they open, which the handler gets before the outcome answers the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.commands import Command
from schemas.outcomes import CommandOutcome
from services.api.answered import AnsweredRecently
from services.api.command_window import WindowedPublisher
from services.api.connection_census import ConnectionCensus
from services.api.reply_listener import ReplyListener, Values
from services.api.topic_tail import TopicFeed
from services.common import tracing
from services.common.kafka_io import Outgoing
from services.common.metrics import API_OUTCOMES_RESOLVED
from services.common.reply_frames import REPLY_HEADER, STARTED_HEADER
from services.common.settings import ApiSettings

log = logging.getLogger(__name__)


class OutcomeTimeout(Exception):
    """The engine did not answer in time; the command may still be applied later."""


class PublishFailed(Exception):
    """The command could not be written to `workflows.commands`: it was not applied."""


class CommandGateway:
    def __init__(
        self,
        settings: ApiSettings,
        feed: TopicFeed,
        started: Values | None = None,
        census: ConnectionCensus | None = None,
    ) -> None:
        """`started`: where the STARTED events of the runs its commands open go, when the
        engine sends them with the outcomes (direct replies). `census`: this instance's
        HTTP connections, whose requests all waiting ends the command window at once."""
        self._settings = settings
        self._census = census if settings.api_publish_when_all_wait else None
        self._publisher: WindowedPublisher | None = None
        self._topics = settings.topics
        self._waiting: dict[str, asyncio.Future[CommandOutcome]] = {}
        # Recently accepted outcomes by command id: a client retrying with its idempotency
        # key is answered at once, without another round through Kafka and the engine.
        self._accepted: OrderedDict[str, CommandOutcome] = OrderedDict()
        # What it answered, for point reads sent before the run list index has the events.
        self.answered = AnsweredRecently(settings.api_index_wait_ms / 1000)
        feed.follow(self._topics.outcomes, self._resolve)
        self.replies = (
            ReplyListener(settings, self._resolve_direct, started)
            if settings.api_direct_replies
            else None
        )
        self._asks_started = started is not None
        # The header of every command this instance waits for (None: no direct replies).
        self._reply_headers: dict[str, str] | None = None
        # The loop it runs in, noted at `start`: `asyncio.get_running_loop()` makes a
        # `getpid` system call on Python 3.11 (its fork check), twice per start here.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, asks_started: bool = True) -> None:
        """Starts the producer; outcomes come once the feed given at construction starts.
        `asks_started`: whether to ask the engine for the STARTED events (when a fold was
        given at construction; False when this instance keeps no run list index)."""
        # The window lets the commands of concurrent requests share a produce request
        # (each request costs the broker far more than a record in it); it ends once no
        # request came for the quiet time, or at the linger (command_window.py).
        self._publisher = WindowedPublisher(
            self._settings,
            "runstore-api",
            self._settings.api_publish_linger_ms,
            self._settings.api_publish_quiet_ms,
            None if self._census is None else self._census.place,
        )
        if self._census is not None:
            self._census.on_zero = self._publisher.nothing_can_come
        await self._publisher.start()
        self._loop = asyncio.get_running_loop()
        if self.replies is not None:
            await self.replies.start()
            if self.replies.header_value is not None:
                self._reply_headers = reply_headers(
                    self.replies.header_value, self._asks_started and asks_started
                )

    def holding(self) -> AbstractContextManager[None]:
        """Around the commands one request sends together (a batch): they share the
        command window, which does not end for this request's first one (the census
        counts the request until the block ends)."""
        return nullcontext() if self._census is None else self._census.holding()

    async def stop(self) -> None:
        self._reply_headers = None
        if self.replies is not None:
            await self.replies.stop()
        if self._publisher is not None:
            await self._publisher.stop()

    def _resolve(self, _partition: int, records: Sequence[Any]) -> None:
        """Resolve the waiters of `records`' outcomes (as `topic_tail.resolve_waiters`)."""
        if resolved := self._resolve_values(r.value for r in records):
            _BY_TOPIC.inc(resolved)

    def _resolve_direct(self, values: Sequence[bytes]) -> None:
        """Resolve the waiters of outcomes the engine wrote straight here."""
        if resolved := self._resolve_values(values):
            _BY_DIRECT.inc(resolved)

    def _resolve_values(self, values: Iterable[bytes | None]) -> int:
        """Resolve the waiters of these outcome values; how many it resolved. An outcome
        whose command id no request here waits for (a worker's or a timer's command,
        another instance's, or the second copy of one resolved already) is skipped without
        being decoded: the id is read from the record's first field (an id with an escape
        in it, or a record of another shape, is decoded)."""
        waiting = self._waiting
        first = len(_ID_FIRST)
        resolved = 0
        for value in values:
            if not value:
                continue
            if value.startswith(_ID_FIRST):
                end = value.find(b'"', first)
                if end > 0:
                    raw = value[first:end]
                    if b"\\" not in raw and raw.decode("utf-8", "replace") not in waiting:
                        continue
            try:
                found = CommandOutcome.model_validate_json(value)
            except ValidationError:
                log.warning("unreadable CommandOutcome record ignored")
                continue
            waiter = waiting.get(found.command_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(found)
                resolved += 1
        return resolved

    async def _publish(self, command: Command, encoded: bytes | None) -> None:
        """TimeoutError when Kafka has not acknowledged it within the command timeout."""
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
            if self._reply_headers is not None:
                headers = (
                    self._reply_headers if headers is None else {**headers, **self._reply_headers}
                )
            await self._publisher.publish(
                [Outgoing(self._topics.commands, command.execution_id, encoded, headers)],
                self._settings.api_command_timeout_seconds,
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
        loop = self._loop
        if loop is None:  # (a publisher given without `start`: tests and benches)
            loop = self._loop = asyncio.get_running_loop()
        if waiter is None:
            waiter = loop.create_future()
            self._waiting[command.command_id] = waiter
        try:
            try:
                # (The window's own timer, rather than an `asyncio.timeout` here.)
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
            if owner:
                outcome = await self._owners_wait(loop, waiter, limit, command.command_id)
            else:
                outcome = await _shared_wait(waiter, limit, command.command_id)
        finally:
            if owner:
                self._waiting.pop(command.command_id, None)
        if outcome.accepted:
            self.answered.note(outcome.execution_id, outcome.run_id)
            self._accepted[command.command_id] = outcome
            self._accepted.move_to_end(command.command_id)
            while len(self._accepted) > self._settings.api_outcome_memory:
                self._accepted.popitem(last=False)
        return outcome

    async def _owners_wait(
        self,
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[CommandOutcome],
        limit: float,
        command_id: str,
    ) -> CommandOutcome:
        """The outcome of the send that registered `waiter`, within `limit` seconds.

        Awaited directly, with a timer that fails it at the deadline: one timer handle
        instead of an `asyncio.timeout` and a shield per start. What a concurrent send of
        the same command (`_shared_wait`) sees: the owner's answer, its deadline (the
        waiter leaves `_waiting` with the owner, so nothing could resolve it later
        anyway) or its cancellation (a disconnected client), which ends a shared wait
        as a timeout."""
        expiry = loop.call_later(limit, _expire, waiter)
        try:
            return await waiter
        except _Expired as exc:
            raise OutcomeTimeout(
                f"the engine did not answer command {command_id} within "
                f"{limit:g}s; it may still be applied"
            ) from exc
        finally:
            expiry.cancel()


def reply_headers(address: str, started: bool) -> dict[str, str]:
    """The headers of a command this instance waits for: where to reply and (`started`)
    that it takes the STARTED events of the runs its commands open."""
    if started:
        return {STARTED_HEADER: "1", REPLY_HEADER: address}
    return {REPLY_HEADER: address}


class _Expired(Exception):
    """An owner's wait for an outcome ran out (set on the shared waiter)."""


def _expire(waiter: asyncio.Future[CommandOutcome]) -> None:
    if not waiter.done():
        waiter.set_exception(_Expired())


async def _shared_wait(
    waiter: asyncio.Future[CommandOutcome], limit: float, command_id: str
) -> CommandOutcome:
    """The outcome another send (or `expect`) registered `waiter` for, within `limit`
    seconds; shielded, so this wait's end or cancellation leaves the waiter to its owner.
    OutcomeTimeout also when the owner's wait ended without an outcome."""
    try:
        async with asyncio.timeout(limit):
            return await asyncio.shield(waiter)
    except (TimeoutError, _Expired) as exc:
        raise OutcomeTimeout(
            f"the engine did not answer command {command_id} within "
            f"{limit:g}s; it may still be applied"
        ) from exc
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this request was cancelled
        # The owner's request was (its waiter with it): no outcome can come here now.
        raise OutcomeTimeout(
            f"the engine's answer to command {command_id} is no longer awaited; "
            "it may still be applied"
        ) from None


_BY_TOPIC = API_OUTCOMES_RESOLVED.labels("topic")
_BY_DIRECT = API_OUTCOMES_RESOLVED.labels("direct")

_ID_FIRST = b'{"command_id":"'
"""How an outcome record begins: the engine encodes `CommandOutcome`, whose first field is
the command id."""
