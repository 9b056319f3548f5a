"""The direct reply channel's wire format (services/common/reply_frames.py)."""

from __future__ import annotations

import ipaddress

import pytest

from services.common.reply_frames import (
    FrameError,
    ReplyAddress,
    address_value,
    frame,
    hello,
    is_tagged,
    parse_address,
    take_frames,
    take_hello,
)


def test_frames_give_back_their_values_byte_for_byte_also_when_split() -> None:
    values = [b'{"command_id":"c1"}', b"", b"x" * 70_000]
    wire = hello(b"tok") + frame(values) + frame([b"second"])
    got: list[bytes] = []
    token = None
    buffer = bytearray()
    for i in range(0, len(wire), 7):  # seven bytes at a time
        buffer += wire[i : i + 7]
        if token is None:
            token = take_hello(buffer)
            if token is None:
                continue
        got.extend(take_frames(buffer, 1 << 20))
    assert token == b"tok"
    assert got == [*values, b"second"]
    assert buffer == bytearray()


def test_a_partial_frame_stays_in_the_buffer() -> None:
    data = frame([b"abc", b"def"])
    buffer = bytearray(data[:-1])
    assert take_frames(buffer, 1024) == []
    assert bytes(buffer) == data[:-1]


def test_a_frame_over_the_limit_or_inconsistent_is_refused() -> None:
    with pytest.raises(FrameError):
        take_frames(bytearray(frame([b"x" * 2000])), 1024)
    body = (10).to_bytes(4, "big") + b"abc"  # a value longer than its frame
    with pytest.raises(FrameError):
        take_frames(bytearray(len(body).to_bytes(4, "big") + body), 1024)


def test_a_connection_that_does_not_start_with_the_hello_is_refused() -> None:
    with pytest.raises(FrameError):
        take_hello(bytearray(b"GET / HTTP/1.1\r\n"))
    with pytest.raises(FrameError):
        take_hello(bytearray(b"XS"))  # refused before the whole hello came
    assert take_hello(bytearray(b"RS")) is None


@pytest.mark.parametrize(
    ("ip", "port"), [("127.0.0.1", 40000), ("10.1.2.3", 1), ("::1", 65535), ("fd00::5", 8)]
)
def test_an_address_goes_through_its_header_value(ip: str, port: int) -> None:
    value = address_value(ip, port, "abc_-1")
    assert parse_address(value.encode()) == ReplyAddress(ipaddress.ip_address(ip), port, b"abc_-1")


@pytest.mark.parametrize(
    "value",
    [
        b"api.example.com:4000/tok",  # a host name: no DNS lookups
        b"127.0.0.1:4000",  # no token
        b"127.0.0.1/tok",  # no port
        b"127.0.0.1:0/tok",
        b"127.0.0.1:70000/tok",
        b"127.0.0.1:x/tok",
        b"\xff\xfe",
        b"127.0.0.1:4000/" + b"t" * 300,
    ],
)
def test_what_is_not_an_address_is_none(value: bytes) -> None:
    assert parse_address(value) is None


def test_a_tagged_hello_is_taken_and_told_apart_from_a_plain_one() -> None:
    for tagged in (False, True):
        buffer = bytearray(hello(b"tok", tagged=tagged) + frame([b"v"]))
        assert is_tagged(buffer) is tagged
        assert take_hello(buffer) == b"tok"
        assert take_frames(buffer, 1 << 20) == [b"v"]
    with pytest.raises(FrameError):
        take_hello(bytearray(b"RSR3\x00\x01t"))
    with pytest.raises(FrameError):
        take_hello(bytearray(b"RSX"))
    assert take_hello(bytearray(b"RSR")) is None
