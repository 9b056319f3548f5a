"""A throw-away PostgreSQL cluster on a free port, at PostgreSQL's shipped defaults (fsync
on, synchronous_commit on, full_page_writes on: a commit returns once its WAL is flushed
to disk). Used by the DBOS peer of bench/http_gateway.py, by bench/local_store.py and by
the tests of FerretDB's PostgreSQL handler.

The server binaries come from Debian's `postgresql` package: found in
/usr/lib/postgresql/<version>/bin (or RUNSTORE_BENCH_PG_BIN), installed with apt-get when
missing and this runs as root. `initdb` and `postgres` refuse to run as root, so as root
the cluster belongs to the `postgres` user the Debian package creates; its directory is
made outside the benchmark's private temporary directory, which that user cannot enter.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infra


def pg_bin(install: bool = True) -> Path:
    """The directory of `initdb` and `postgres`, installing Debian's package if needed
    (and `install`)."""
    if configured := os.environ.get("RUNSTORE_BENCH_PG_BIN"):
        return Path(configured)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("PostgreSQL: installing Debian's postgresql package...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
            check=True,
            env=env,
        )
        return pg_bin()
    raise RuntimeError(
        "PostgreSQL server binaries not found: install Debian's postgresql package or set "
        "RUNSTORE_BENCH_PG_BIN"
    )


def _cluster_user() -> str | None:
    """The user the cluster runs as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root needs the `postgres` user (Debian package)") from exc
    return "postgres"


@contextmanager
def postgres_server(log_dir: Path, database: str = "bench") -> Iterator[tuple[str, int]]:
    """A fresh cluster on a free port: its `postgresql://` URL for `database` (created
    empty) and the postmaster's pid (its backends are its children)."""
    binaries = pg_bin()
    user = _cluster_user()
    root = Path(tempfile.mkdtemp(prefix="runstore-bench-pg-"))
    try:
        if user is not None:
            shutil.chown(root, user)
        data = root / "data"
        init_log = log_dir / "postgres-initdb.log"
        with init_log.open("ab") as out:
            subprocess.run(
                [
                    str(binaries / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=user,
                check=True,
            )
        port = infra.free_port()
        cmd = [
            str(binaries / "postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(root),  # its Unix socket, instead of /var/run/postgresql
        ]
        log = log_dir / "postgres.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, user=user, start_new_session=True
            )
        try:
            _create_database(binaries, port, database, user, proc, log)
            yield f"postgresql://postgres@127.0.0.1:{port}/{database}", proc.pid
        finally:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for clients).
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _create_database(
    binaries: Path,
    port: int,
    database: str,
    user: str | None,
    proc: subprocess.Popen[bytes],
    log: Path,
) -> None:
    """Creates the database, retrying until the server accepts connections."""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}; see {log}")
        done = subprocess.run(
            [
                str(binaries / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                database,
            ],
            capture_output=True,
            user=user,
            check=False,
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"createdb failed: {done.stderr.decode(errors='replace')}")
        time.sleep(0.5)
