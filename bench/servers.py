"""Kafka and the MongoDB-protocol server for a benchmark: the ones RUNSTORE_KAFKA_BOOTSTRAP
and RUNSTORE_MONGO_URL name, or local ones started on free ports (deploy/local/infra.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy" / "local"))

import infra
from cpu_meter import kafka_pid, mongo_pid


@contextmanager
def mongo_server(workdir: Path) -> Iterator[tuple[str, int | None]]:
    """The MongoDB-protocol server RUNSTORE_MONGO_URL names, or a local FerretDB started on
    a free port with its data under `workdir` (stopped on exit); and its pid if local."""
    if mongo := os.environ.get("RUNSTORE_MONGO_URL"):
        yield mongo, mongo_pid(mongo)
        return
    with infra.start_ferretdb(infra.free_port(), workdir / "ferretdb") as handle:
        yield handle.address, handle.pid


@contextmanager
def bench_servers(workdir: Path) -> Iterator[tuple[str, str, dict[str, int]]]:
    """Kafka's and MongoDB's addresses, and their pids where known (for CPU accounting:
    "kafka", "mongo"). Servers started here keep their data under `workdir` and stop on
    exit."""
    kafka = os.environ.get("RUNSTORE_KAFKA_BOOTSTRAP")
    pids: dict[str, int] = {}
    with ExitStack() as stack:
        if not kafka:
            handle = infra.start_kafka(infra.free_port(), infra.free_port(), workdir / "kafka")
            stack.callback(handle.stop)
            kafka = handle.address
            pids["kafka"] = handle.pid
        elif (pid := kafka_pid(kafka)) is not None:
            pids["kafka"] = pid
        mongo, local_pid = stack.enter_context(mongo_server(workdir))
        if local_pid is not None:
            pids["mongo"] = local_pid
        yield kafka, mongo, pids
