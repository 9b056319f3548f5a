"""The direct reply channel's wire format, shared by the engine (which writes) and the API
(which listens): docs/api-gateway.md, "The direct reply channel".

A command the API waits for carries the Kafka header `REPLY_HEADER`: where its instance
listens and the instance's token, as `<ip>:<port>/<token>` (an IPv6 address in
brackets). After a batch is stored and completed, the engine opens (or reuses) a TCP
connection to that address, sends `hello(token)` once, then one `frame` per batch: the
outcome records' values, byte for byte as on `workflows.outcomes`.

    hello: b"RSR1" | token length (u16, big endian) | token
    frame: body length (u32) | body = (value length (u32) | value)*

An instance that also takes the STARTED event of each run its commands opened (to fold it
into its run list index before it answers: docs/read-models.md) says so with the header
`STARTED_HEADER` next to `REPLY_HEADER`. Only then does the engine open the connection
with `MAGIC_TAGGED` instead of `MAGIC`; on such a connection every value starts with one
byte saying what it is (`OUTCOME`, or `STARTED`: that event's record value, byte for byte
as on `workflows.events`), and a run's STARTED comes before its command's outcome. So an
engine that does not know the header (an older one) sends plain frames, which a newer API
takes; and an older API, which never sends the header, never gets a tagged value.

    hello: b"RSR2" | token length (u16) | token
    frame: as above, each value = kind (1 byte) | bytes
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

REPLY_HEADER = "runstore-reply"
STARTED_HEADER = "runstore-reply-started"
"""Present (any value): the waiting instance takes the STARTED events of the runs its
commands open, on a tagged connection."""
MAGIC = b"RSR1"
MAGIC_TAGGED = b"RSR2"
OUTCOME = b"\x00"
"""A tagged value's first byte: an outcome record's value follows."""
STARTED = b"\x01"
"""A tagged value's first byte: a WORKFLOW_EXECUTION_STARTED event record's value follows."""
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
    started: bool = False
    """The instance takes STARTED events (`STARTED_HEADER`): its connection is tagged."""

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


def hello(token: bytes, tagged: bool = False) -> bytes:
    """What a connection starts with (`tagged`: its values carry their kind)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError("token too long")
    return (MAGIC_TAGGED if tagged else MAGIC) + len(token).to_bytes(2, "big") + token


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
    FrameError when the connection does not start with this protocol's hello (either
    magic: `is_tagged` tells which, before the call)."""
    if len(buffer) < len(MAGIC) + 2:
        head = bytes(buffer[: len(MAGIC)])
        if not (MAGIC.startswith(head) or MAGIC_TAGGED.startswith(head)):
            raise FrameError("not a reply connection")
        return None
    if buffer[: len(MAGIC)] not in (MAGIC, MAGIC_TAGGED):
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


def is_tagged(buffer: bytearray) -> bool:
    """Whether the hello at the start of `buffer` opens a tagged connection."""
    return buffer[: len(MAGIC_TAGGED)] == MAGIC_TAGGED


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
