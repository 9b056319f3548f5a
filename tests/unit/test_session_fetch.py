"""The API feed's own fetch requests and responses (services/api/session_fetch.py): the
bytes aiokafka's protocol structs would write and read, and the records of a partition
read from a position on."""

from __future__ import annotations

import asyncio
import struct
from io import BytesIO

import pytest
from aiokafka.errors import KafkaError
from aiokafka.protocol.fetch import FetchRequest_v7, FetchResponse_v7
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from services.api.session_fetch import (
    SessionFetcher,
    _FetchResponse,
    encode_fetch,
    parse_fetch_response,
    read_records,
)


def test_a_fetch_request_is_the_bytes_of_aiokafkas_v7_struct() -> None:
    ours = encode_fetch(
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=52_428_800,
        session_id=1234,
        epoch=7,
        partitions=[("a.events", 3, 17), ("a.outcomes", 0, 5), ("a.events", 11, 0)],
        partition_max_bytes=1_048_576,
        forgotten=[("a.events", 4), ("b", 1), ("a.events", 9)],
    )
    theirs = FetchRequest_v7(
        -1,
        500,
        1,
        52_428_800,
        0,
        1234,
        7,
        [
            ("a.events", [(3, 17, -1, 1_048_576), (11, 0, -1, 1_048_576)]),
            ("a.outcomes", [(0, 5, -1, 1_048_576)]),
        ],
        [("a.events", [4, 9]), ("b", [1])],
    ).encode()
    assert ours == bytes(theirs)


def test_a_full_request_without_partitions_or_forgotten_ones() -> None:
    ours = encode_fetch(
        max_wait_ms=10,
        min_bytes=2,
        max_bytes=3,
        session_id=0,
        epoch=0,
        partitions=[],
        partition_max_bytes=4,
    )
    assert ours == bytes(FetchRequest_v7(-1, 10, 2, 3, 0, 0, 0, [], []).encode())


def test_a_fetch_response_is_read_as_aiokafka_writes_it() -> None:
    raw = FetchResponse_v7(
        0,
        0,
        99,
        [
            (
                "t.events",
                [
                    (2, 0, 40, 40, 0, [(7, 30), (8, 31)], b"batch-bytes"),
                    (5, 1, -1, -1, -1, None, None),
                ],
            ),
            ("t.outcomes", [(0, 0, 12, 12, 0, [], b"")]),
        ],
    ).encode()
    buffer = BytesIO(b"head" + bytes(raw))  # read from where the response header ended
    buffer.read(4)
    answer = _FetchResponse.decode(buffer)
    assert (answer.error, answer.session_id) == (0, 99)
    got = [(p.topic, p.partition, p.error, p.high_watermark, p.records) for p in answer.partitions]
    assert got == [
        ("t.events", 2, 0, 40, b"batch-bytes"),
        ("t.events", 5, 1, -1, None),
        ("t.outcomes", 0, 0, 12, None),
    ]


def test_a_session_error_leaves_no_partitions() -> None:
    raw = bytes(FetchResponse_v7(0, 71, 0, []).encode())
    answer = parse_fetch_response(raw)
    assert (answer.error, answer.session_id, answer.partitions) == (71, 0, [])


def _batch(base_offset: int, values: list[bytes], control: bool = False) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for delta, value in enumerate(values):
        builder.append(delta, 1_000 + delta, b"k%d" % delta, value, [("h", b"v")])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)
    if control:
        (attributes,) = struct.unpack_from(">h", data, 21)
        struct.pack_into(">h", data, 21, attributes | 0x20)
        struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    return bytes(data)


def test_records_from_the_position_on_skipping_control_batches() -> None:
    raw = (
        _batch(10, [b"a", b"b", b"c"])
        + _batch(13, [b"commit-marker"], control=True)
        + _batch(14, [b"d", b"e"])
    )
    records, after = read_records("t", 4, 11, raw)
    assert [(r.offset, r.value) for r in records] == [
        (11, b"b"),
        (12, b"c"),
        (14, b"d"),
        (15, b"e"),
    ]
    assert after == 16
    first = records[0]
    assert (first.topic, first.partition, first.key, first.timestamp) == ("t", 4, b"k1", 1_001)
    assert list(first.headers) == [("h", b"v")]


def test_a_truncated_last_batch_is_left_for_the_next_fetch() -> None:
    whole = _batch(0, [b"x", b"y"])
    partial = _batch(2, [b"z" * 100])[:40]
    records, after = read_records("t", 0, 0, whole + partial)
    assert [r.offset for r in records] == [0, 1]
    assert after == 2


def test_a_control_batch_alone_moves_the_position() -> None:
    records, after = read_records("t", 0, 7, _batch(7, [b"marker"], control=True))
    assert (records, after) == ([], 8)


def test_a_batch_with_a_wrong_checksum_is_refused() -> None:
    data = bytearray(_batch(0, [b"payload"]))
    data[-3] ^= 0xFF
    with pytest.raises(KafkaError):
        read_records("t", 0, 0, bytes(data))


async def test_a_fetcher_with_nothing_to_follow_waits_instead_of_failing() -> None:
    fetcher = SessionFetcher(None, {}, lambda *_: None)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fetcher.run(), 0.05)
