"""The API's end of the direct reply channel: a TCP listener the engine writes outcome
frames to (services/common/reply_frames.py, docs/api-gateway.md).

The instance draws a random token at start; the commands it waits for name its address
and token in their reply header. A connection must open with that token (compared in
constant time): otherwise it is closed, counted, and nothing it sent resolves anything.
Each frame's values go to `resolve` (the gateway's, as the outcome topic's records do).
On a tagged connection (the engine opens one when the commands asked for STARTED events,
`STARTED_HEADER`) each value says what it is: the STARTED events of a frame go to
`started` (the run list index's fold) before its outcomes go to `resolve`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import cast

from services.common.metrics import API_REPLY_CONNECTIONS
from services.common.reply_frames import (
    OUTCOME,
    STARTED,
    FrameError,
    address_value,
    is_tagged,
    take_frames,
    take_hello,
)
from services.common.settings import ApiSettings

log = logging.getLogger(__name__)

_ACCEPTED = API_REPLY_CONNECTIONS.labels("accepted")
_REFUSED = API_REPLY_CONNECTIONS.labels("refused")


Values = Callable[[Sequence[bytes]], None]


class ReplyListener:
    def __init__(
        self, settings: ApiSettings, resolve: Values, started: Values | None = None
    ) -> None:
        """`resolve`: what outcome values go to; `started`: what STARTED event values go
        to (None: they are dropped)."""
        self._settings = settings
        self._resolve = resolve
        self._started = started
        self.token = secrets.token_urlsafe(24).encode("ascii")
        self._server: asyncio.Server | None = None
        self._connections: set[_ReplyConnection] = set()
        self.header_value: str | None = None
        """What commands carry in `REPLY_HEADER` once listening; None before (or when
        no address can be advertised)."""

    async def start(self) -> None:
        settings = self._settings
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ReplyConnection(self), settings.api_reply_host, settings.api_reply_port
        )
        port = self._server.sockets[0].getsockname()[1]
        advertised = settings.api_reply_advertise or settings.api_reply_host
        if advertised == "auto":
            advertised = await _own_address()
        try:
            ip = ipaddress.ip_address(advertised)
        except ValueError:
            log.warning(
                "direct replies off: RUNSTORE_API_REPLY_ADVERTISE must be an IP, not %r", advertised
            )
            return
        if ip.is_unspecified:
            ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
        self.header_value = address_value(str(ip), port, self.token.decode("ascii"))
        log.info("direct replies at %s:%d (advertised %s)", settings.api_reply_host, port, ip)

    @property
    def port(self) -> int | None:
        return self._server.sockets[0].getsockname()[1] if self._server is not None else None

    async def stop(self) -> None:
        self.header_value = None
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.abort()
            await self._server.wait_closed()
            self._server = None


_HELLO_S = 5.0
"""How long a new connection has to send its token."""
_MAX_UNTRUSTED = 16
"""Connections without a token yet, at most (an engine opens one per API instance)."""


class _ReplyConnection(asyncio.Protocol):
    def __init__(self, listener: ReplyListener) -> None:
        self._listener = listener
        self._buffer = bytearray()
        self._trusted = False
        self._tagged = False
        self._transport: asyncio.Transport | None = None
        self._hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not subclasses of asyncio.Transport, but are ones.)
        self._transport = cast("asyncio.Transport", transport)
        connections = self._listener._connections
        if sum(1 for c in connections if not c._trusted) >= _MAX_UNTRUSTED:
            # Connections that have not sent the token yet are bounded: whatever can reach
            # the port cannot take the API's file descriptors.
            _REFUSED.inc()
            self._transport.abort()
            return
        connections.add(self)
        # One that has not sent it within the hello time is closed.
        self._hello_timer = asyncio.get_running_loop().call_later(_HELLO_S, self._hello_missed)

    def _hello_missed(self) -> None:
        self._hello_timer = None
        if not self._trusted:
            _REFUSED.inc()
            log.warning("reply connection closed: no hello within %gs", _HELLO_S)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener._connections.discard(self)
        if self._hello_timer is not None:
            self._hello_timer.cancel()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            if not self._trusted:
                tagged = is_tagged(self._buffer)
                token = take_hello(self._buffer)
                if token is None:
                    return
                if not hmac.compare_digest(token, self._listener.token):
                    raise FrameError("wrong token")
                self._trusted = True
                self._tagged = tagged
                if self._hello_timer is not None:
                    self._hello_timer.cancel()
                    self._hello_timer = None
                _ACCEPTED.inc()
            values = take_frames(self._buffer, self._listener._settings.api_reply_max_frame_bytes)
        except FrameError as exc:
            if not self._trusted:
                _REFUSED.inc()
            log.warning("reply connection closed: %s", exc)
            self._buffer.clear()
            self.abort()
            return
        if not values:
            return
        listener = self._listener
        if self._tagged:
            started: list[bytes] = []
            outcomes: list[bytes] = []
            for value in values:
                kind = value[:1]
                if kind == OUTCOME:
                    outcomes.append(value[1:])
                elif kind == STARTED:
                    started.append(value[1:])
                # (another kind: a newer engine's, which this instance did not ask for)
            if started and listener._started is not None:
                try:
                    listener._started(started)
                except Exception:
                    log.exception("folding the STARTED events of direct replies failed")
            values = outcomes
        if values:
            try:
                listener._resolve(values)
            except Exception:
                log.exception("resolving direct replies failed")


async def _own_address() -> str:
    """The address this host's name resolves to (in a container: its address on the
    container network), an IPv4 one that is not loopback if there is one."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("could not resolve this host's name for direct replies: %s", exc)
        return "127.0.0.1"
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for ip in addresses:
        if ip.version == 4 and not ip.is_loopback:
            return str(ip)
    return str(addresses[0]) if addresses else "127.0.0.1"
