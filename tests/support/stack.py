"""Runs Runstore's services as real processes (`runstore engine|projector|api`)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
from pymongo import MongoClient

from services.common.settings import RunstoreSettings
from tests.support.servers import free_port


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    engine_health_port: int = field(default_factory=free_port)
    projector_health_port: int = field(default_factory=free_port)
    timers_health_port: int = field(default_factory=free_port)
    worker_health_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def probe_url(self, service: str) -> str:
        """Where a service serves /healthz, /readyz and /metrics."""
        port = {
            "api": self.api_port,
            "engine": self.engine_health_port,
            "projector": self.projector_health_port,
            "timers": self.timers_health_port,
            "worker": self.worker_health_port,
        }[service]
        return f"http://127.0.0.1:{port}"

    def start(
        self,
        service: str,
        instance: str | None = None,
        env: dict[str, str] | None = None,
        api_port: int | None = None,
        args: list[str] | None = None,
    ) -> None:
        """Start `runstore <service>` as process `instance` (default: the service's name;
        several instances of one service need distinct names). An API started with its
        own `api_port` is reached at `url_of(instance)`; `args` follow the service name
        (e.g. a worker's `--module`)."""
        name = instance or service
        port = api_port or self.api_port
        env = {
            **os.environ,
            **self.env,
            "RUNSTORE_API_PORT": str(port),
            # A second instance finds its probe port taken: it logs that and runs on.
            "RUNSTORE_ENGINE_HEALTH_PORT": str(self.engine_health_port),
            "RUNSTORE_PROJECTOR_HEALTH_PORT": str(self.projector_health_port),
            "RUNSTORE_TIMERS_HEALTH_PORT": str(self.timers_health_port),
            "RUNSTORE_WORKER_HEALTH_PORT": str(self.worker_health_port),
            **(env or {}),
        }
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", service, *(args or [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if service == "api":
            self.ports[name] = port
            self._wait_for_api(name)

    def url_of(self, instance: str) -> str:
        return f"http://127.0.0.1:{self.ports[instance]}"

    def _wait_for_api(self, name: str = "api", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                if httpx.get(f"{self.url_of(name)}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer in {timeout}s:\n{self.log_tail(name)}")

    def kill(self, service: str) -> None:
        """SIGKILL: no shutdown hooks, no flush, no offset commit."""
        proc = self.procs.pop(service)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    async def kill_repeatedly(
        self,
        service: str,
        times: int,
        pause: tuple[float, float],
        rng: random.Random,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """SIGKILL `service` `times` times, each a random `pause` (seconds) after it was
        (re)started (after `ready()` returned, when given: e.g. once it wrote something),
        and start it again at once; returns how many kills were done."""
        kills = 0
        while kills < times:
            if ready is not None:
                await ready()
            await asyncio.sleep(rng.uniform(*pause))
            self.kill(service)
            kills += 1
            self.start(service)
        return kills

    def stop(self, service: str) -> None:
        proc = self.procs.pop(service, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:  # it exited by itself (e.g. refused to start)
            proc.wait()
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for service in list(self.procs):
            self.stop(service)

    def log_tail(self, service: str, lines: int = 40) -> str:
        path = self.log_dir / f"{service}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


CORE_SERVICES = ("engine", "projector", "api")
TIMERS_STACK = ("engine", "projector", "timers", "api")
WORKER_STACK = ("engine", "projector", "timers", "worker", "api")


def read_models_name(env: Mapping[str, str]) -> str:
    """The database a stack on `env` keeps its read models in (the services' rule)."""
    return RunstoreSettings(
        mongo_database=env["RUNSTORE_MONGO_DATABASE"],
        mongo_read_models_database=env.get("RUNSTORE_MONGO_READ_MODELS_DATABASE", ""),
    ).read_models_database


def isolated_env(kafka_bootstrap: str, mongo_url: str) -> dict[str, str]:
    """Environment for services under test: real servers, private topics and database."""
    tag = uuid.uuid4().hex[:10]
    return {
        "RUNSTORE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "RUNSTORE_MONGO_URL": mongo_url,
        "RUNSTORE_MONGO_DATABASE": f"t_{tag}",
        "RUNSTORE_MONGO_READ_MODELS_DATABASE": "",  # the default, whatever the shell has
        "RUNSTORE_TOPIC_PREFIX": f"t{tag}.",
        "RUNSTORE_PARTITIONS": "4",
        "RUNSTORE_API_KEYS": "test-key=alice,bob-key=bob",
        # The suites start runs of workflows no worker registered (tests/sdk/test_catalogue.py
        # turns this off to check the refusal).
        "RUNSTORE_API_ALLOW_UNREGISTERED": "true",
        "RUNSTORE_LOG_LEVEL": "INFO",
    }


def drop_databases(env: Mapping[str, str]) -> None:
    """Drop the commits' and the read models' databases of a stack's `env` (its private
    ones: `isolated_env`), so a shared test server (RUNSTORE_TEST_MONGO_URL) does not keep
    them."""
    # A short server selection: a server gone at teardown fails it in seconds, beside the
    # test's own error, rather than after pymongo's default 30 s.
    client: MongoClient[dict[str, object]] = MongoClient(
        env["RUNSTORE_MONGO_URL"], serverSelectionTimeoutMS=5000
    )
    try:
        for name in {env["RUNSTORE_MONGO_DATABASE"], read_models_name(env)}:
            client.drop_database(name)
    finally:
        client.close()


@contextmanager
def private_env(kafka_bootstrap: str, mongo_url: str, **overrides: str) -> Iterator[dict[str, str]]:
    """`isolated_env` with `overrides`, its databases dropped when the block ends."""
    env = {**isolated_env(kafka_bootstrap, mongo_url), **overrides}
    try:
        yield env
    finally:
        drop_databases(env)


@contextmanager
def running(
    env: dict[str, str],
    log_dir: Path,
    services: tuple[str, ...] = CORE_SERVICES,
    worker_module: str = "examples.workflows",
) -> Iterator[Stack]:
    """A stack of these services (started in order; a worker serves `worker_module`),
    stopped when the block ends."""
    stack = Stack(env=env, log_dir=log_dir)
    try:
        for service in services:
            args = ["--module", worker_module] if service == "worker" else None
            stack.start(service, args=args)
        yield stack
    finally:
        stack.stop_all()


class StackWith(Protocol):
    """The `stack_with` fixture: `with stack_with(RUNSTORE_X="1") as stack: ...` runs a
    stack on private topics and a private database, the test's settings over the defaults."""

    def __call__(
        self,
        services: tuple[str, ...] = CORE_SERVICES,
        worker_module: str = "examples.workflows",
        **env: str,
    ) -> AbstractContextManager[Stack]: ...
