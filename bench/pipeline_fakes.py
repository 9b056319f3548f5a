"""What the engine's pipeline needs of a consumed batch, for benches that drive
`EnginePipeline` in process (bench/engine_pipeline_latency.py,
bench/engine_workflow_cpu.py): a record's position and a consumer that commits nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Position:
    __slots__ = ("offset", "partition", "topic")

    def __init__(self, record: Any) -> None:
        self.topic, self.partition, self.offset = "commands", record.partition, record.offset


class Consumer:
    async def commit(self, offsets: Mapping[Any, int]) -> None:
        return None

    def seek(self, partition: Any, offset: int) -> None:
        raise RuntimeError("nothing fails here: no seek expected")
