#!/usr/bin/env python3
"""The whole Runstore stack on this machine, without Docker.

    python deploy/local/stack.py run     # foreground: infra + services; Ctrl-C stops all
    python deploy/local/stack.py up      # background; returns once the HTTP API answers
    python deploy/local/stack.py down    # stops services and infra, frees every port
    python deploy/local/stack.py status

Kafka and FerretDB come from deploy/local/infra.py (installed and cached on first use).
Services run as `python -m services.cli <name>` with this process's environment, so
RUNSTORE_* variables given to `make up` reach them. Addresses come from
RUNSTORE_KAFKA_BOOTSTRAP, RUNSTORE_MONGO_URL and RUNSTORE_API_PORT (defaults
127.0.0.1:9092, mongodb://127.0.0.1:27017, 8080). Logs: .local/logs/, pids: .local/run/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import infra  # noqa: E402  (a sibling script, not a package)

SERVICES = ("engine", "projector", "api")
RUN_DIR = REPO / ".local" / "run"
LOG_DIR = REPO / ".local" / "logs"
API_READY_TIMEOUT = 90.0


def _say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def _ports() -> tuple[int, int, int]:
    kafka = os.environ.get("RUNSTORE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    mongo = os.environ.get("RUNSTORE_MONGO_URL", "mongodb://127.0.0.1:27017")
    api = int(os.environ.get("RUNSTORE_API_PORT", "8080"))
    return int(kafka.rsplit(":", 1)[1]), urlparse(mongo).port or 27017, api


def _pidfile(service: str) -> Path:
    return RUN_DIR / f"{service}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_infra() -> None:
    kafka_port, mongo_port, _ = _ports()
    infra.install("all")
    infra.start_kafka(kafka_port, kafka_port + 1)
    infra.start_ferretdb(mongo_port)


def start_services() -> dict[str, subprocess.Popen[bytes]]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for service in SERVICES:
        pidfile = _pidfile(service)
        if pidfile.exists() and _alive(int(pidfile.read_text())):
            _say(f"{service} already running (pid {pidfile.read_text().strip()})")
            continue
        log = (LOG_DIR / f"{service}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", service],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pidfile.write_text(str(proc.pid))
        procs[service] = proc
        _say(f"started {service} (pid {proc.pid}, log {LOG_DIR / (service + '.log')})")
    return procs


def wait_for_api() -> str:
    _, _, api_port = _ports()
    url = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + API_READY_TIMEOUT
    while time.monotonic() < deadline:
        pidfile = _pidfile("api")
        if pidfile.exists() and not _alive(int(pidfile.read_text())):
            break
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    tail = (LOG_DIR / "api.log").read_text(errors="replace").splitlines()[-40:]
    raise SystemExit("[stack] the API did not come up; last lines of its log:\n" + "\n".join(tail))


def stop_services() -> None:
    for service in reversed(SERVICES):
        pidfile = _pidfile(service)
        if not pidfile.exists():
            continue
        pid = int(pidfile.read_text())
        if _alive(pid):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
            _say(f"stopped {service}")
        pidfile.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_infra() -> None:
    infra.stop("kafka")
    infra.stop("ferretdb")


def up() -> None:
    start_infra()
    start_services()
    url = wait_for_api()
    _say(f"Runstore is up: API at {url}  (stop with: make down)")
    print(url)


def down() -> None:
    stop_services()
    stop_infra()
    _say("everything stopped")


def run() -> None:
    """Foreground: start all, print the URL, stop all on Ctrl-C or when a service dies."""
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        start_infra()
        procs = start_services()
        url = wait_for_api()
        _say(f"Runstore is running: API at {url}  (Ctrl-C stops everything)")
        print(url, flush=True)
        while not stopping:
            dead = [s for s, p in procs.items() if p.poll() is not None]
            if dead:
                _say(f"{', '.join(dead)} exited; stopping the stack (see .local/logs/)")
                break
            time.sleep(0.5)
    finally:
        down()


def status() -> None:
    for service in SERVICES:
        pidfile = _pidfile(service)
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        state = "running" if pid and _alive(pid) else "stopped"
        print(f"{service:10} {state}" + (f" (pid {pid})" if pid and state == "running" else ""))
    for name in ("kafka", "ferretdb"):
        print(infra.status(name).line())
    sys.path.insert(0, str(REPO))
    from services.console.status import print_status  # readiness and lag of each service

    print_status()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["run", "up", "down", "status"])
    command = parser.parse_args().command
    {"run": run, "up": up, "down": down, "status": status}[command]()


if __name__ == "__main__":
    main()
