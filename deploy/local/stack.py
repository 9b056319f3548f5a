#!/usr/bin/env python3
"""The whole Runstore stack on this machine, without Docker, with its services supervised.

    python deploy/local/stack.py run        # foreground: infra + supervised services; Ctrl-C
    python deploy/local/stack.py up         # background; returns once the HTTP API answers
    python deploy/local/stack.py down       # stops supervisor, services and infra, frees every port
    python deploy/local/stack.py status
    python deploy/local/stack.py supervise  # the supervisor alone (`up` runs it in the background)

Kafka and FerretDB come from deploy/local/infra.py (installed and cached on first use).
Services run as `python -m services.cli <name>` with this process's environment, so
RUNSTORE_* variables given to `make up` reach them. Addresses come from
RUNSTORE_KAFKA_BOOTSTRAP, RUNSTORE_MONGO_URL and RUNSTORE_API_PORT (defaults
127.0.0.1:9092, mongodb://127.0.0.1:27017, 8080).

A supervisor owns the services: one that exits is started again after a back-off (1 s,
doubling up to 30 s; back to 1 s once a start has lived 60 s), and each exit and restart
is logged (`.local/logs/stack.log` under `up`, stderr under `run`). Pidfiles
(`.local/run/<name>.pid`, JSON) record the pid *and* the process's start time, so a
recycled pid or a zombie left by a SIGKILL is never taken for a live service.

RUNSTORE_STACK_DIR moves `run/` and `logs/` (default `<repo>/.local`);
RUNSTORE_STACK_SERVICES=engine,projector starts a subset (tests).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import infra  # noqa: E402  (a sibling script, not a package)


@dataclass(frozen=True)
class Service:
    """One supervised process: `python -m services.cli <args>`."""

    name: str
    args: tuple[str, ...]


# The stack, in start order (stopped in reverse). A new service is one line here.
SERVICES: tuple[Service, ...] = (
    Service("engine", ("engine",)),
    Service("projector", ("projector",)),
    Service("timers", ("timers",)),
    Service("worker", ("worker", "--module", "examples.workflows")),
    Service("api", ("api",)),
)

STATE_DIR = Path(os.environ.get("RUNSTORE_STACK_DIR") or REPO / ".local")
RUN_DIR = STATE_DIR / "run"
LOG_DIR = STATE_DIR / "logs"
SUPERVISOR = "supervisor"
API_READY_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
"""A start that lived this long was a success: the next failure starts the back-off over."""


def _say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} [stack] {message}", file=sys.stderr, flush=True)


def services() -> tuple[Service, ...]:
    only = os.environ.get("RUNSTORE_STACK_SERVICES")
    if not only:
        return SERVICES
    wanted = {n.strip() for n in only.split(",") if n.strip()}
    unknown = wanted - {s.name for s in SERVICES}
    if unknown:
        raise SystemExit(f"[stack] unknown services in RUNSTORE_STACK_SERVICES: {sorted(unknown)}")
    return tuple(s for s in SERVICES if s.name in wanted)


def _ports() -> tuple[int, int, int]:
    kafka = os.environ.get("RUNSTORE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    mongo = os.environ.get("RUNSTORE_MONGO_URL", "mongodb://127.0.0.1:27017")
    api = int(os.environ.get("RUNSTORE_API_PORT", "8080"))
    return int(kafka.rsplit(":", 1)[1]), urlparse(mongo).port or 27017, api


# --------------------------------------------------------------------------------------------
# Pidfiles that know whose pid they hold
# --------------------------------------------------------------------------------------------


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22): with
    the pid, it names one process for the machine's uptime. None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    started: int | None
    """start_ticks(pid) when it was written; None in an old plain-number pidfile."""
    restarts: int = 0

    def alive(self) -> bool:
        """Is this still the process that was recorded: running, not a zombie, same start
        time (else the pid was recycled)? Old pidfiles without a start time are checked by
        their command line instead."""
        if not infra._pid_alive(self.pid):
            return False
        if self.started is not None:
            return start_ticks(self.pid) == self.started
        args = infra._cmdline(self.pid)
        wanted = "stack.py" if self.name == SUPERVISOR else "services.cli"
        return any(wanted in a for a in args) and (self.name == SUPERVISOR or self.name in args)


def _pidfile(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def write_pidfile(name: str, pid: int, restarts: int = 0) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = _pidfile(name)
    tmp = path.with_name(path.name + ".tmp")
    body = {"pid": pid, "started": start_ticks(pid), "restarts": restarts}
    tmp.write_text(json.dumps(body) + "\n")
    os.replace(tmp, path)


def read_pidfile(name: str) -> PidRecord | None:
    try:
        raw = _pidfile(name).read_text().strip()
    except OSError:
        return None
    try:
        if raw.isdigit():  # written by an older stack.py
            return PidRecord(name, int(raw), None)
        body = json.loads(raw)
        return PidRecord(name, int(body["pid"]), body.get("started"), int(body.get("restarts", 0)))
    except (ValueError, KeyError, TypeError):
        return None


def running(name: str) -> PidRecord | None:
    """The live process a pidfile names, or None (a stale pidfile is removed)."""
    record = read_pidfile(name)
    if record is None:
        return None
    if record.alive():
        return record
    _pidfile(name).unlink(missing_ok=True)
    return None


def _stop_pid(name: str, pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the process group, wait, then SIGKILL; reaps our own children."""
    infra._signal_group(pid, signal.SIGTERM)
    if not infra._wait_exit(pid, proc, STOP_TIMEOUT):
        _say(f"{name} (pid {pid}) still running {STOP_TIMEOUT:.0f}s after SIGTERM: SIGKILL")
        infra._signal_group(pid, signal.SIGKILL)
        infra._wait_exit(pid, proc, 10.0)


# --------------------------------------------------------------------------------------------
# The supervisor
# --------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One service under supervision."""

    service: Service
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    """Set for processes this supervisor started (so it can reap them); None when it
    adopted one a previous supervisor left running."""
    record: PidRecord | None = None
    since: float = 0.0
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None

    def exited(self) -> int | str | None:
        """The exit status if the process is gone, else None."""
        if self.proc is not None:
            code = self.proc.poll()
            return None if code is None else _describe(code)
        if self.record is not None and not self.record.alive():
            return "gone"
        return None


def _describe(code: int) -> int | str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return code


class Supervisor:
    def __init__(self, wanted: tuple[Service, ...]) -> None:
        self.slots = [_Slot(s) for s in wanted]
        self.stopping = False

    def _launch(self, slot: _Slot) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = LOG_DIR / f"{slot.service.name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *slot.service.args],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopping it stops its children
            )
        slot.proc, slot.pid, slot.since, slot.restart_at = proc, proc.pid, time.monotonic(), None
        write_pidfile(slot.service.name, proc.pid, slot.restarts)
        slot.record = read_pidfile(slot.service.name)
        _say(f"started {slot.service.name} (pid {proc.pid}, log {log_path})")

    def start(self) -> None:
        for slot in self.slots:
            found = running(slot.service.name)
            if found is not None:
                # Left by a supervisor that died: watch it instead of starting a second one.
                slot.pid, slot.record, slot.since = found.pid, found, time.monotonic()
                slot.restarts = found.restarts
                _say(f"{slot.service.name} already running (pid {found.pid}): adopted")
            else:
                self._launch(slot)

    def check(self) -> None:
        """One round: notice exits, schedule restarts with back-off, start those due."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    slot.restarts += 1
                    self._launch(slot)
                continue
            status = slot.exited()
            if status is None:
                continue
            lived = now - slot.since
            slot.failures = 1 if lived >= STABLE_AFTER else slot.failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (slot.failures - 1))
            _say(
                f"{slot.service.name} (pid {slot.pid}) exited ({status}) after {lived:.1f}s; "
                f"restarting in {delay:.1f}s (restart {slot.restarts + 1}, see "
                f"{LOG_DIR / (slot.service.name + '.log')})"
            )
            slot.proc, slot.record, slot.restart_at = None, None, now + delay
            _pidfile(slot.service.name).unlink(missing_ok=True)

    def stop(self) -> None:
        for slot in reversed(self.slots):
            if slot.pid is not None and slot.restart_at is None and slot.exited() is None:
                _stop_pid(slot.service.name, slot.pid, slot.proc)
                _say(f"stopped {slot.service.name}")
            _pidfile(slot.service.name).unlink(missing_ok=True)

    def run(self) -> None:
        def request_stop(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        write_pidfile(SUPERVISOR, os.getpid())
        try:
            self.start()
            while not self.stopping:
                self.check()
                time.sleep(0.2)
        finally:
            self.stop()
            record = read_pidfile(SUPERVISOR)
            if record is not None and record.pid == os.getpid():
                _pidfile(SUPERVISOR).unlink(missing_ok=True)


def supervise() -> None:
    existing = running(SUPERVISOR)
    if existing is not None and existing.pid != os.getpid():
        raise SystemExit(f"[stack] a supervisor is already running (pid {existing.pid})")
    Supervisor(services()).run()


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def start_infra() -> None:
    kafka_port, mongo_port, _ = _ports()
    infra.install("all")
    infra.start_kafka(kafka_port, kafka_port + 1)
    infra.start_ferretdb(mongo_port)


def start_supervisor() -> None:
    """The supervisor in the background, unless a live one is there already."""
    found = running(SUPERVISOR)
    if found is not None:
        _say(f"supervisor already running (pid {found.pid})")
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / "stack.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "supervise"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _say(f"started the supervisor (pid {proc.pid}, log {LOG_DIR / 'stack.log'})")


def wait_for_api() -> str:
    _, _, api_port = _ports()
    url = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + API_READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    log = LOG_DIR / "api.log"
    tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
    raise SystemExit("[stack] the API did not come up; last lines of its log:\n" + "\n".join(tail))


def stop_services() -> None:
    """Stop the supervisor (it stops its services), then any service it left behind."""
    found = running(SUPERVISOR)
    if found is not None:
        _stop_pid(SUPERVISOR, found.pid)
        _say(f"stopped the supervisor (pid {found.pid})")
        _pidfile(SUPERVISOR).unlink(missing_ok=True)
    for service in reversed(SERVICES):
        orphan = running(service.name)
        if orphan is not None:
            _stop_pid(service.name, orphan.pid)
            _say(f"stopped {service.name} (pid {orphan.pid})")
        _pidfile(service.name).unlink(missing_ok=True)


def stop_infra() -> None:
    infra.stop("kafka")
    infra.stop("ferretdb")


def up() -> None:
    start_infra()
    start_supervisor()
    url = wait_for_api()
    _say(f"Runstore is up: API at {url}  (stop with: make down)")
    print(url)


def down() -> None:
    stop_services()
    stop_infra()
    _say("everything stopped")


def run() -> None:
    """Foreground: infra, then the supervisor in this process; Ctrl-C stops all."""
    try:
        start_infra()
        if running(SUPERVISOR) is not None:
            raise SystemExit("[stack] the stack is already up in the background (make down first)")

        def announce() -> None:
            url = wait_for_api()
            _say(f"Runstore is running: API at {url}  (Ctrl-C stops everything)")
            print(url, flush=True)

        threading.Thread(target=announce, daemon=True).start()
        Supervisor(services()).run()
    finally:
        down()


def status() -> None:
    found = running(SUPERVISOR)
    print(f"{SUPERVISOR:10} " + (f"running (pid {found.pid})" if found else "stopped"))
    for service in SERVICES:
        record = read_pidfile(service.name)
        if record is not None and record.alive():
            restarts = f", {record.restarts} restarts" if record.restarts else ""
            print(f"{service.name:10} running (pid {record.pid}{restarts})")
        elif record is not None:
            print(f"{service.name:10} stopped (stale pidfile: pid {record.pid} is not it)")
        else:
            print(f"{service.name:10} stopped")
    for name in ("kafka", "ferretdb"):
        print(infra.status(name).line())
    sys.path.insert(0, str(REPO))
    from services.console.status import print_status  # readiness and lag of each service

    print_status()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["run", "up", "down", "status", "supervise"])
    command = parser.parse_args().command
    {"run": run, "up": up, "down": down, "status": status, "supervise": supervise}[command]()


if __name__ == "__main__":
    main()
