"""The command window (services/api/command_window.py) puts each record in the partition
Kafka's default partitioner gives its key, with our murmur2 (services/common/kafka_io.py;
the engine's and the timers' partitions too): the same hash as aiokafka's for every
length and byte value, so a key's records land where any other Kafka producer would put
them."""

from __future__ import annotations

import random

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from services.common.ids import new_id
from services.common.kafka_io import murmur2


def test_murmur2_equals_aiokafkas_for_every_length_and_byte() -> None:
    rng = random.Random(7)
    for length in range(0, 130):
        for _ in range(40):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) == aiokafka_murmur2(data), data
    for value in range(256):  # every byte value, in every tail position
        for length in (1, 2, 3, 4, 5, 6, 7):
            data = bytes([value]) * length
            assert murmur2(data) == aiokafka_murmur2(data), data


def test_murmur2_equals_aiokafkas_for_execution_ids() -> None:
    for _ in range(2000):
        key = new_id().encode()
        assert murmur2(key) == aiokafka_murmur2(key)
