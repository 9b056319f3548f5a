"""Where the real Kafka and MongoDB-protocol servers for tests come from.

In this order: addresses given in the environment (RUNSTORE_TEST_KAFKA_BOOTSTRAP,
RUNSTORE_TEST_MONGO_URL); else testcontainers when a Docker engine answers (Kafka in
KRaft mode and a MongoDB replica set, as users with Docker run them); else the local
servers that deploy/local/infra.py installs and starts on free ports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free port no other caller in this test process has been given (see infra.free_port)."""
    return int(_infra().free_port())


def docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def local_script(name: str, folder: str = "local") -> ModuleType:
    """A script of deploy/<folder>/ (`infra`, `stack`; k8s `validate`) loaded as a module.
    infra is one module per process, whether loaded here or imported by name (`import
    infra`, as deploy/local's scripts do): its free_port remembers the ports it gave out."""
    if name == "infra":
        loaded = sys.modules.get("runstore_local_infra") or sys.modules.get("infra")
        if loaded is not None:
            sys.modules.setdefault("runstore_local_infra", loaded)
            return loaded
    else:
        _infra()  # the other scripts import infra by name
        sys.modules.setdefault("infra", sys.modules["runstore_local_infra"])
    path = REPO / "deploy" / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"runstore_{folder}_{name}", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    if name == "infra":
        sys.modules.setdefault("infra", module)
    spec.loader.exec_module(module)
    return module


def _infra() -> ModuleType:
    return sys.modules.get("runstore_local_infra") or local_script("infra")


@contextlib.contextmanager
def kafka_server() -> Iterator[str]:
    given = os.environ.get("RUNSTORE_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    infra = _infra()
    with tempfile.TemporaryDirectory(prefix="runstore-kafka-") as tmp:
        handle = infra.start_kafka(
            port=free_port(), controller_port=free_port(), data_dir=Path(tmp)
        )
        try:
            yield handle.address
        finally:
            handle.stop()


@contextlib.contextmanager
def mongo_server() -> Iterator[str]:
    given = os.environ.get("RUNSTORE_TEST_MONGO_URL")
    if given:
        yield given
        return
    if docker_available():
        from testcontainers.mongodb import MongoDbContainer

        container = MongoDbContainer("mongo:7").with_command("--replSet rs0 --bind_ip_all")
        with container as mongo:
            mongo.exec(
                "mongosh --quiet --eval "
                "\"rs.initiate({_id:'rs0',members:[{_id:0,host:'localhost:27017'}]})\""
            )
            yield mongo.get_connection_url() + "/?directConnection=true"
        return
    infra = _infra()
    with tempfile.TemporaryDirectory(prefix="runstore-ferretdb-") as tmp:
        handle = infra.start_ferretdb(port=free_port(), data_dir=Path(tmp))
        try:
            yield handle.address
        finally:
            handle.stop()
