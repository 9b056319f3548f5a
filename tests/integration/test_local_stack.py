"""The local stack's supervisor (deploy/local/stack.py): a service that dies is started
again with back-off, and a pidfile is believed only while its pid is the same process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.eventually import wait_until
from tests.support.servers import REPO, local_script

stack = local_script("stack")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_recycled_pid_or_a_zombie_is_not_taken_for_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    pidfile = tmp_path / "engine.pid"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stack.write_pidfile("engine", other.pid)
        found = stack.running("engine")
        assert found is not None and found.pid == other.pid

        # The pid was recycled: the same number, another process (other start time).
        started = stack.start_ticks(other.pid)
        pidfile.write_text(json.dumps({"pid": other.pid, "started": started - 1}))
        assert stack.running("engine") is None
        assert not pidfile.exists(), "a stale pidfile is removed"

        # An old plain-number pidfile whose pid now runs something that is no service.
        pidfile.write_text(str(other.pid))
        assert stack.running("engine") is None
    finally:
        other.kill()
        other.wait()

    # A SIGKILLed process nobody reaped yet: kill(pid, 0) still succeeds on the zombie,
    # which is how `make up` once took a dead engine for a live one.
    dead = subprocess.Popen(["sleep", "60"])
    try:
        stack.write_pidfile("engine", dead.pid)
        os.kill(dead.pid, signal.SIGKILL)

        def zombie() -> None:
            assert _state(dead.pid) == "Z"

        wait_until(zombie)
        os.kill(dead.pid, 0)  # the old liveness check: no error
        assert stack.running("engine") is None
    finally:
        dead.wait()


def _supervisor(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(REPO / "deploy" / "local" / "stack.py"), "supervise"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _pid_of(run_dir: Path, name: str, not_: int | None = None) -> int:
    """Wait for `name`'s pidfile to name a live process (other than `not_`)."""

    def check() -> int:
        # A new supervisor removes a stale pidfile before it starts the service again, so
        # the file may vanish between any check and the read: absent means "not yet".
        try:
            text = (run_dir / f"{name}.pid").read_text()
        except FileNotFoundError:
            raise AssertionError(f"no pidfile for {name}") from None
        pid = int(json.loads(text)["pid"])
        assert pid != not_, f"{name} not restarted yet"
        assert not _gone(pid), f"{name}'s pidfile names a dead process"
        return pid

    return wait_until(check, timeout=60)


def _gone(pid: int) -> bool:
    try:
        return _state(pid) in ("Z", "X")
    except OSError:
        return True


@pytest.mark.slow
def test_supervisor_restarts_a_killed_service_with_backoff_and_adopts_survivors(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **isolated,
        "RUNSTORE_STACK_DIR": str(tmp_path),
        "RUNSTORE_STACK_SERVICES": "engine,projector",
    }
    run_dir, log = tmp_path / "run", tmp_path / "stack.log"
    supervisor = _supervisor(env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        engine = _pid_of(run_dir, "engine")
        projector = _pid_of(run_dir, "projector")

        # SIGKILL twice in a row: restarted each time, the second wait twice the first.
        os.killpg(engine, signal.SIGKILL)
        engine = _pid_of(run_dir, "engine", not_=engine)
        os.killpg(engine, signal.SIGKILL)
        engine = _pid_of(run_dir, "engine", not_=engine)
        text = log.read_text()
        assert "engine (pid" in text and "exited (SIGKILL)" in text, text
        assert "restarting in 1.0s (restart 1" in text, text
        assert "restarting in 2.0s (restart 2" in text, text
        assert json.loads((run_dir / "engine.pid").read_text())["restarts"] == 2
        assert _pid_of(run_dir, "projector") == projector, "the projector was left alone"

        # The supervisor and the engine die together (a crash of the whole session):
        # a new supervisor starts a new engine and adopts the projector still running.
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait()
        os.killpg(engine, signal.SIGKILL)
        second = _supervisor(env, log)
        engine = _pid_of(run_dir, "engine", not_=engine)
        assert _pid_of(run_dir, "projector") == projector
        wait_until(lambda: _assert_in(log, f"projector already running (pid {projector})"))

        # Stopping the supervisor stops what it watches, adopted or started.
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
        assert _gone(engine) and _gone(projector)
        assert not list(run_dir.glob("*.pid"))
    finally:
        for proc in (supervisor, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for pidfile in run_dir.glob("*.pid"):
            pid = int(json.loads(pidfile.read_text())["pid"])
            if not _gone(pid):
                os.killpg(pid, signal.SIGKILL)


def _assert_in(path: Path, text: str) -> None:
    assert text in path.read_text(), path.read_text()
