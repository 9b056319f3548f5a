"""The direct reply channel's wire format, shared by the engine (which writes) and the API
(which listens): docs/api-gateway.md, "The direct reply channel".

A command the API waits for carries the Kafka header `REPLY_HEADER`: where its instance
listens and the instance's token, as `<ip>:<port>/<token>` (an IPv6 address in
brackets). After a batch is stored and completed, the engine opens (or reuses) a TCP
connection to that address, sends `hello(token)` once, then one `frame` per batch: the
outcome records' values, byte for byte as on `workflows.outcomes`.

    hello: b"RSR1" | token length (u16, big endian) | token
    frame: body length (u32) | body = (value length (u32) | value)*
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

REPLY_HEADER = "runstore-reply"
MAGIC = b"RSR1"
MAX_TOKEN_BYTES = 256
MAX_VALUE_BYTES = 128
"""Longest header value read as an address (`[IPv6]:port/` and a token of 64)."""
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""The tokens a header may name: `secrets.token_urlsafe`'s alphabet (the API's are 32)."""
_U32 = 4


class FrameError(Exception):
    """The peer sent something that is not this protocol (or over a limit)."""


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """Where an API instance listens for outcome frames, and its token."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    token: bytes

    @property
    def host(self) -> str:
        return str(self.ip)


def address_value(ip: str, port: int, token: str) -> str:
    """The header value naming an API instance's listener (`ip` must be an IP literal)."""
    parsed = ipaddress.ip_address(ip)
    host = f"[{parsed}]" if parsed.version == 6 else str(parsed)
    return f"{host}:{port}/{token}"


def parse_address(value: object) -> ReplyAddress | None:
    """The address and token in a header value; None when it is not one: not bytes (Kafka
    allows a null header value), longer than any address, a host name (the engine does no
    DNS lookups for a producer's header), or a token not of the shape an API instance
    draws (so a header cannot make the engine write bytes of its choosing, such as line
    breaks, to whatever listens at an allowed address)."""
    if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
        return None
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    where, slash, token = text.partition("/")
    host, colon, port_text = where.rpartition(":")
    if not slash or not colon or _TOKEN.fullmatch(token) is None:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    return ReplyAddress(ip, port, token.encode("ascii"))


def hello(token: bytes) -> bytes:
    """What a connection starts with."""
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError("token too long")
    return MAGIC + len(token).to_bytes(2, "big") + token


def frame(values: Sequence[bytes]) -> bytes:
    """One batch's outcome values for one address."""
    parts: list[bytes] = []
    size = 0
    for value in values:
        parts.append(len(value).to_bytes(_U32, "big"))
        parts.append(value)
        size += _U32 + len(value)
    return b"".join((size.to_bytes(_U32, "big"), *parts))


def take_hello(buffer: bytearray) -> bytes | None:
    """The token at the start of `buffer` (removed from it), or None while incomplete.
    FrameError when the connection does not start with this protocol's hello."""
    if len(buffer) < len(MAGIC) + 2:
        if not MAGIC.startswith(bytes(buffer[: len(MAGIC)])):
            raise FrameError("not a reply connection")
        return None
    if buffer[: len(MAGIC)] != MAGIC:
        raise FrameError("not a reply connection")
    length = int.from_bytes(buffer[len(MAGIC) : len(MAGIC) + 2], "big")
    if length > MAX_TOKEN_BYTES:
        raise FrameError("token too long")
    end = len(MAGIC) + 2 + length
    if len(buffer) < end:
        return None
    token = bytes(buffer[len(MAGIC) + 2 : end])
    del buffer[:end]
    return token


def take_frames(buffer: bytearray, max_frame_bytes: int) -> list[bytes]:
    """The outcome values of the complete frames at the start of `buffer` (removed from
    it); a partial frame stays. FrameError when a frame is over `max_frame_bytes` or its
    values do not add up to its length."""
    values: list[bytes] = []
    at = 0
    end = len(buffer)
    view = memoryview(buffer)
    try:
        while end - at >= _U32:
            size = int.from_bytes(view[at : at + _U32], "big")
            if size > max_frame_bytes:
                raise FrameError(f"frame of {size} bytes over the limit")
            body_end = at + _U32 + size
            if body_end > end:
                break
            i = at + _U32
            while i < body_end:
                if body_end - i < _U32:
                    raise FrameError("truncated value length")
                n = int.from_bytes(view[i : i + _U32], "big")
                i += _U32
                if i + n > body_end:
                    raise FrameError("value over the frame's end")
                values.append(bytes(view[i : i + n]))
                i += n
            at = body_end
    finally:
        view.release()
    if at:
        del buffer[:at]
    return values
