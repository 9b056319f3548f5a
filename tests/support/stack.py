"""Runs Runstore's services as real processes (`runstore engine|projector|api`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.servers import free_port


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    engine_health_port: int = field(default_factory=free_port)
    projector_health_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def probe_url(self, service: str) -> str:
        """Where a service serves /healthz, /readyz and /metrics."""
        port = {
            "api": self.api_port,
            "engine": self.engine_health_port,
            "projector": self.projector_health_port,
        }[service]
        return f"http://127.0.0.1:{port}"

    def start(self, service: str) -> None:
        env = {
            **os.environ,
            **self.env,
            "RUNSTORE_API_PORT": str(self.api_port),
            "RUNSTORE_ENGINE_HEALTH_PORT": str(self.engine_health_port),
            "RUNSTORE_PROJECTOR_HEALTH_PORT": str(self.projector_health_port),
        }
        log = (self.log_dir / f"{service}.log").open("ab")
        self.procs[service] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", service],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if service == "api":
            self._wait_for_api()

    def _wait_for_api(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs["api"]
            if proc.poll() is not None:
                raise RuntimeError(f"api exited with {proc.returncode}:\n{self.log_tail('api')}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"api did not answer in {timeout}s:\n{self.log_tail('api')}")

    def kill(self, service: str) -> None:
        """SIGKILL: no shutdown hooks, no flush, no offset commit."""
        proc = self.procs.pop(service)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self, service: str) -> None:
        proc = self.procs.pop(service, None)
        if proc is None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
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
