"""Outcomes straight to the API instance waiting for them (the direct reply channel).

A command an API request waits for names, in its `REPLY_HEADER`, the instance's listener
and token (services/common/reply_frames.py). Once a batch is stored and completed, its
outcomes are final: the pipeline hands them here (before it waits for the batch before to
be published), and they are written, one frame per address per batch, to the waiting
instances. The outcome records on `workflows.outcomes` are published as before; they are
the fallback, and the instance skips the copy it no longer waits for.

An instance that asks for them (`STARTED_HEADER`) also gets, before a command's outcome,
the WORKFLOW_EXECUTION_STARTED event of the run the command's commit opened, encoded as
it goes to `workflows.events` (it folds it into its run list index, so a read right after
the answer finds the run; the topic's copy then changes nothing there). A STARTED event
over `MAX_STARTED_BYTES`, or past `FRAME_STARTED_BYTES` in one frame, is left to the topic.

Nothing here waits for an API instance, or fails the batch: a connection is opened in the
background (its frames queued meanwhile, a bounded number), a frame is dropped when its
connection is down or has more than `buffer_bytes` unsent, and Kafka answers instead.
Only addresses in the allowed networks are connected to, and only IP literals (no DNS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, cast

from schemas.commands import Command
from schemas.commits import Commit
from schemas.events import EventType
from schemas.outcomes import CommandOutcome
from services.common.metrics import ENGINE_REPLIES
from services.common.reply_frames import (
    MAX_VALUE_BYTES,
    OUTCOME,
    REPLY_HEADER,
    STARTED,
    STARTED_HEADER,
    ReplyAddress,
    frame,
    hello,
    parse_address,
)
from services.engine.validation import InboundRecord

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Routes = dict[str, ReplyAddress]
"""Command id -> the instance waiting for its outcome."""

_SENT = ENGINE_REPLIES.labels("sent")
_DROPPED = ENGINE_REPLIES.labels("dropped")
_REFUSED = ENGINE_REPLIES.labels("refused")

_ABSENT = object()
"""No reply header (a null value is refused, counted)."""

MAX_STARTED_BYTES = 64 * 1024
"""A STARTED event encoded larger than this (a large input) is not sent: the topic's copy
folds it (the API's frame limit is 16 MiB, its default; the connection's buffer 1 MiB)."""
FRAME_STARTED_BYTES = 256 * 1024
"""STARTED events' bytes in one frame at most (the rest are left to the topic)."""


def networks(specs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(s, strict=False) for s in specs]


class _Link(asyncio.Protocol):
    """One connection to one address, opened in the background."""

    def __init__(self, address: ReplyAddress, max_queued: int, buffer_bytes: int) -> None:
        self.address = address
        self._max_queued = max_queued
        self._buffer_bytes = buffer_bytes
        self._queued: list[tuple[bytes, int]] = []
        """Frames waiting for the connection, with how many outcomes each holds."""
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Task[Any] | None = None
        self.down_since: float | None = None
        self.last_used = time.monotonic()

    # --- the connection's life ----------------------------------------------------

    def connect(self, timeout_s: float) -> None:
        self.down_since = None
        self.connecting = asyncio.create_task(self._connect(timeout_s))

    async def _connect(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: self, self.address.host, self.address.port)
        except Exception as exc:  # refused, unreachable, timed out: down, tried again later
            log.info(
                "reply connection to %s:%d failed: %s", self.address.host, self.address.port, exc
            )
            self._down()
        finally:
            self.connecting = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not subclasses of asyncio.Transport, but are ones.)
        stream = cast("asyncio.Transport", transport)
        self.transport = stream
        stream.write(hello(self.address.token, tagged=self.address.started))
        queued, self._queued = self._queued, []
        for data, outcomes in queued:
            stream.write(data)
            _SENT.inc(outcomes)

    def data_received(self, data: bytes) -> None:
        pass  # the API sends nothing

    def connection_lost(self, exc: Exception | None) -> None:
        self._down()

    def _down(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.transport = None
        _DROPPED.inc(sum(outcomes for _, outcomes in self._queued))
        self._queued = []
        self.down_since = time.monotonic()

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.transport is not None:
            self.transport.close()
        self.transport = None
        self._queued = []

    # --- frames -------------------------------------------------------------------

    def send(self, data: bytes, outcomes: int) -> None:
        """Write `data` (a frame of `outcomes` outcomes), queue it while connecting, or
        drop it; counted as sent once written."""
        self.last_used = time.monotonic()
        transport = self.transport
        if transport is not None:
            if transport.is_closing() or transport.get_write_buffer_size() > self._buffer_bytes:
                _DROPPED.inc(outcomes)
            else:
                transport.write(data)
                _SENT.inc(outcomes)
        elif self.connecting is not None and len(self._queued) < self._max_queued:
            self._queued.append((data, outcomes))
        else:
            _DROPPED.inc(outcomes)


class ReplySender:
    """The engine's side of the channel: which instances wait (from a batch's records),
    and writing their outcomes."""

    def __init__(
        self,
        allowed: Sequence[Network],
        max_links: int = 64,
        buffer_bytes: int = 1024 * 1024,
        idle_s: float = 60.0,
        max_queued: int = 64,
        retry_s: float = 1.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self._allowed = tuple(allowed)
        self._max_links = max_links
        self._buffer_bytes = buffer_bytes
        self._idle_s = idle_s
        self._max_queued = max_queued
        self._retry_s = retry_s
        self._connect_timeout_s = connect_timeout_s
        self._links: OrderedDict[ReplyAddress, _Link] = OrderedDict()
        # (Header value, whether STARTED_HEADER is there) -> its address, None when it is
        # not one or not allowed: every command of an instance carries the same headers.
        self._parsed: dict[tuple[bytes, bool], ReplyAddress | None] = {}
        self._swept = time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self._allowed)

    def routes(self, commands: Sequence[tuple[InboundRecord, Command]]) -> Routes | None:
        """Who waits for the outcomes of a batch's parsed commands, by command id (only
        the outcome of the command whose record named an address goes there); None when
        nobody does."""
        found: Routes | None = None
        for record, command in commands:
            if not record.headers:
                continue
            reply: object = _ABSENT
            started = False
            for name, value in record.headers:
                if name == REPLY_HEADER:
                    reply = value
                elif name == STARTED_HEADER:
                    started = True
            if reply is _ABSENT:
                continue
            address = self._address(reply, started)
            if address is not None:
                if found is None:
                    found = {}
                found[command.command_id] = address
        return found

    def _address(self, value: object, started: bool) -> ReplyAddress | None:
        if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
            _REFUSED.inc()
            return None  # not cached: a key of any size would stay in the cache
        key = (value, started)
        if key in self._parsed:
            return self._parsed[key]
        address = parse_address(value)
        if address is not None and not any(address.ip in net for net in self._allowed):
            log.warning(
                "a command asks for replies at %s, outside the allowed networks", address.host
            )
            address = None
        if address is None:
            _REFUSED.inc()
        elif started:
            address = ReplyAddress(address.ip, address.port, address.token, started=True)
        if len(self._parsed) >= 1024:
            self._parsed.clear()
        self._parsed[key] = address
        return address

    def send(
        self,
        routes: Routes,
        outcomes: Iterable[CommandOutcome],
        commits: Iterable[Commit] = (),
        encoded: dict[int, bytes] | None = None,
    ) -> None:
        """Write each outcome whose execution someone waits for, one frame per address
        (with the STARTED event of the run its command opened, from `commits`, to those
        that take it). Never waits, never raises for a connection's sake. `encoded`: where
        to leave the JSON made of each outcome and event (by `id()`), which the batch's
        records reuse (`Outbound.encoded`)."""
        if encoded is None:
            encoded = {}
        by_address: dict[ReplyAddress, list[bytes]] = {}
        started: dict[str, bytes] | None = None
        started_bytes: dict[ReplyAddress, int] = {}
        for outcome in outcomes:
            address = routes.get(outcome.command_id)
            if address is None:
                continue
            value = encoded[id(outcome)] = outcome.__pydantic_serializer__.to_json(outcome)
            values = by_address.setdefault(address, [])
            if not address.started:
                values.append(value)
                continue
            if started is None:
                started = _started_events(routes, commits, encoded)
            event = started.get(outcome.command_id)
            if event is not None:
                used = started_bytes.get(address, 0) + len(event)
                if used <= FRAME_STARTED_BYTES:
                    started_bytes[address] = used
                    values.append(STARTED + event)
            values.append(OUTCOME + value)
        now = time.monotonic()
        for address, values in by_address.items():
            count = _outcomes_in(values) if address.started else len(values)
            self._link(address, now).send(frame(values), count)
        if now - self._swept > self._idle_s / 4:
            self._sweep(now)

    def _link(self, address: ReplyAddress, now: float) -> _Link:
        link = self._links.get(address)
        if link is None:
            while len(self._links) >= self._max_links:
                _, oldest = self._links.popitem(last=False)
                oldest.close()
            link = _Link(address, self._max_queued, self._buffer_bytes)
            self._links[address] = link
            link.connect(self._connect_timeout_s)
        else:
            self._links.move_to_end(address)
            if (
                link.transport is None
                and link.connecting is None
                and link.down_since is not None
                and now - link.down_since >= self._retry_s
            ):
                link.connect(self._connect_timeout_s)
        return link

    def _sweep(self, now: float) -> None:
        """Close the connections not used for `idle_s`."""
        self._swept = now
        for address, link in list(self._links.items()):
            if now - link.last_used > self._idle_s:
                link.close()
                del self._links[address]

    @property
    def connections(self) -> int:
        return sum(1 for link in self._links.values() if link.transport is not None)

    async def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()


def _started_events(
    routes: Routes, commits: Iterable[Commit], encoded: dict[int, bytes]
) -> dict[str, bytes]:
    """By command id: the STARTED event (as `workflows.events` gets it) of the run the
    command's commit opened, for the commands whose instance takes them (not over
    `MAX_STARTED_BYTES`). Each event encoded goes into `encoded` too (by `id()`)."""
    found: dict[str, bytes] = {}
    for commit in commits:
        address = routes.get(commit.command_id)
        if address is None or not address.started:
            continue
        for event in commit.events:
            if event.type is EventType.WORKFLOW_EXECUTION_STARTED:
                data = encoded[id(event)] = event.__pydantic_serializer__.to_json(event)
                if len(data) <= MAX_STARTED_BYTES:
                    found[commit.command_id] = data
                break
    return found


def _outcomes_in(values: Sequence[bytes]) -> int:
    return sum(1 for v in values if v[:1] == OUTCOME)
