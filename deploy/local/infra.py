#!/usr/bin/env python3
"""Local, Docker-free Kafka and MongoDB-protocol servers for Runstore development and tests.

Runstore needs a Kafka broker and a MongoDB-protocol database. On machines without a Docker
engine this module provides both from package registries only:

* Kafka: Apache Kafka 3.9.x as a single KRaft node (broker + controller in one JVM), its jars
  resolved from Maven Central by ``deploy/local/kafka/pom.xml``.
* FerretDB v1 with its SQLite backend, embedded in a tiny Go program
  (``deploy/local/ferretdb``) built with the local Go toolchain from the Go module proxy.

Everything generated lives under ``<repo>/.local/``: ``cache/`` for jars and binaries, and one
data directory per server (default ``.local/data/<server>/``) holding its data, logs and pidfile.

CLI (see ``--help``)::

    python deploy/local/infra.py install {kafka,ferretdb,all}
    python deploy/local/infra.py start   {kafka,ferretdb,all} [--port N] [--controller-port N]
                                         [--postgresql-url URL]
                                         [--data-dir DIR] [--timeout S] [--foreground]
    python deploy/local/infra.py stop    {kafka,ferretdb,all} [--data-dir DIR]
    python deploy/local/infra.py status  [{kafka,ferretdb,all}] [--data-dir DIR]

Importable (stdlib only), e.g. from a pytest fixture that wants its own servers::

    from deploy.local import infra          # repo root on sys.path

    infra.install("all")
    with infra.start_kafka(infra.free_port(), infra.free_port(), tmp_path / "kafka") as kafka:
        ...  # kafka.address == "127.0.0.1:<port>"
    with infra.start_ferretdb(0, tmp_path / "ferretdb") as mongo:
        ...  # mongo.address == "mongodb://127.0.0.1:<port>/"

Progress goes to stderr prefixed ``[infra]``; the CLI's ``start`` prints only the server
address(es) on stdout so scripts can capture them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

# --------------------------------------------------------------------------------------------
# Locations and constants
# --------------------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
LOCAL_DIR = REPO_ROOT / ".local"
CACHE_DIR = LOCAL_DIR / "cache"
DATA_ROOT = LOCAL_DIR / "data"

KAFKA_POM = HERE / "kafka" / "pom.xml"
KAFKA_LOG4J = HERE / "kafka" / "log4j.properties"
FERRETDB_SRC = HERE / "ferretdb"
FERRETDB_MODULE = "github.com/FerretDB/FerretDB"

SERVERS = ("kafka", "ferretdb")
HOST = "127.0.0.1"

DEFAULT_KAFKA_PORT = 9092
DEFAULT_MONGO_PORT = 27017
KAFKA_START_TIMEOUT = 90.0
FERRETDB_START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
PORT_RELEASE_TIMEOUT = 10.0
LOG_TAIL_LINES = 40

#: Logged by KafkaRaftServer once the broker is unfenced and serving.
KAFKA_READY_RE = re.compile(rb"Kafka Server started")
#: The FerretDB wrapper prints its MongoDB URI on stdout once the listener is bound.
FERRETDB_URI_RE = re.compile(rb"^mongodb://[^/\s]+:(\d+)/\s*$", re.MULTILINE)

#: Go release the FerretDB v1.24.2 module requires (its go.mod says ``go 1.24``).
MIN_GO = (1, 24)
#: Heap of the local broker (``KAFKA_HEAP_OPTS`` replaces it): fixed at its old maximum. Started
#: at 256 MB, G1 grew it under load and ran concurrent marking cycles in the first minutes:
#: G1's threads took 0.18-0.24 ms of CPU per start at 56 starts/s, 0.06-0.07 with the fixed
#: heap (docs/write-path-cost.md, "Ninth session"). Memory is taken as it is used, as
#: before: the kernel backs a page when it is first touched, up to the same 768 MB.
DEFAULT_KAFKA_HEAP = ("-Xms768m", "-Xmx768m")
#: JIT and GC flags of the local broker (``KAFKA_JVM_PERFORMANCE_OPTS`` replaces them, as with
#: Kafka's own scripts). C1 only (``TieredStopAtLevel=1``): a broker started by a test or a
#: benchmark spends its first minutes mostly in the C2 compiler and in code not compiled yet
#: -- measured in bench/http_gateway.py's window, C2 compiling took 0.7-1.5 ms of CPU per
#: start and the broker 2-9 ms per start in all, against 0.7-0.9 ms with C1 alone, which
#: compiles in seconds; the request handlers' steady-state CPU per start was no higher with
#: C1's code (docs/write-path-cost.md).
DEFAULT_KAFKA_JVM_OPTS = ("-XX:TieredStopAtLevel=1", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")


class InfraError(RuntimeError):
    """A local server could not be installed, started or stopped; the message says why."""


def _say(message: str) -> None:
    """Progress for humans; stderr so that stdout stays machine-readable."""
    print(f"[infra] {message}", file=sys.stderr, flush=True)


def _ensure_local_dir() -> None:
    """Create ``.local/`` and make it ignore itself, whatever the repo's .gitignore says."""
    LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    ignore = LOCAL_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Generated by deploy/local/infra.py: caches, data, logs.\n*\n")


def default_data_dir(name: str) -> Path:
    """Where a server keeps its data, logs and pidfile unless the caller chooses."""
    return DATA_ROOT / name


# --------------------------------------------------------------------------------------------
# Versions (single source of truth: the committed build files)
# --------------------------------------------------------------------------------------------


def kafka_version() -> str:
    """The Kafka version pinned by ``kafka.version`` in deploy/local/kafka/pom.xml."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(KAFKA_POM).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise InfraError(f"{KAFKA_POM} has no <kafka.version> property")
    return (node.text or "").strip()


def ferretdb_version() -> str:
    """The FerretDB version required by deploy/local/ferretdb/go.mod."""
    text = (FERRETDB_SRC / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?github\.com/FerretDB/FerretDB\s+v(\S+)", text, re.M)
    if match is None:
        raise InfraError(f"{FERRETDB_SRC / 'go.mod'} does not require github.com/FerretDB/FerretDB")
    return match.group(1)


def kafka_libs_dir() -> Path:
    return CACHE_DIR / f"kafka-{kafka_version()}" / "libs"


def _ferretdb_inputs() -> list[Path]:
    # The patches too: a binary built before a patch changed is not reused.
    return [FERRETDB_SRC / "go.mod", FERRETDB_SRC / "go.sum", *FERRETDB_SRC.glob("*.go"),
            *_ferretdb_patches()]


def _ferretdb_patches() -> list[Path]:
    """Our patches to FerretDB's source (unified diffs, paths relative to its module root)."""
    return sorted(FERRETDB_SRC.glob("*.patch"))


def ferretdb_binary() -> Path:
    """The wrapper's binary, named by FerretDB's version and a hash of the wrapper's
    sources: the cache is shared by every worktree, so branches with different wrappers
    each keep their own binary instead of rebuilding over each other's."""
    tag = _fingerprint(_ferretdb_inputs())[:12]
    return CACHE_DIR / "bin" / f"runstore-ferretdb-{ferretdb_version()}-{tag}"


# --------------------------------------------------------------------------------------------
# Install (idempotent, cached, safe to run concurrently)
# --------------------------------------------------------------------------------------------


def _fingerprint(paths: Sequence[Path]) -> str:
    """Hash of the inputs of a build: a changed pom/go.mod/main.go invalidates the cache."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _marker_ok(marker: Path, fingerprint: str, artifact: Path) -> bool:
    """True when a previous install finished (marker written last) for the same inputs."""
    try:
        recorded = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return False
    return recorded == fingerprint and artifact.exists()


def _write_marker(marker: Path, fingerprint: str, **extra: str) -> None:
    payload = {"fingerprint": fingerprint, "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({**payload, **extra}, indent=2) + "\n")
    os.replace(tmp, marker)


@contextlib.contextmanager
def _file_lock(path: Path, what: str) -> Iterator[None]:
    """Serialise installs/starts across processes (parallel pytest workers, two shells)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process to finish with {what} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InfraError(f"`{name}` not found on PATH: {hint}")
    return path


def _java() -> str:
    """JAVA_HOME's java if set (as Kafka's own scripts do), else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return _require_tool("java", "install a JDK 17+ (e.g. apt-get install openjdk-17-jre-headless)")


def _run_build(cmd: Sequence[str], what: str, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> None:
    """Run a build step quietly; on failure raise with the tail of its output."""
    result = subprocess.run(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace").strip().splitlines()
        tail = "\n".join(output[-60:])
        raise InfraError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")


def install_kafka() -> Path:
    """Resolve the Kafka broker jars (+ an SLF4J binding) into the cache; return the libs dir.

    Maven does the resolution (transitive deps, checksums, its own ~/.m2 cache), so no tarball
    download is needed. The marker is written only after the jars are in place.
    """
    _ensure_local_dir()
    version = kafka_version()
    libs = kafka_libs_dir()
    marker = libs.parent / ".installed"
    fingerprint = _fingerprint([KAFKA_POM])
    if _marker_ok(marker, fingerprint, libs / f"kafka_2.13-{version}.jar"):
        _say(f"kafka {version}: cached in {libs}")
        return libs
    with _file_lock(CACHE_DIR / f".kafka-{version}.lock", f"installing kafka {version}"):
        if _marker_ok(marker, fingerprint, libs / f"kafka_2.13-{version}.jar"):
            return libs
        mvn = _require_tool("mvn", "install Maven 3.6+ (e.g. apt-get install maven)")
        _java()
        marker.unlink(missing_ok=True)
        partial = libs.with_name("libs.partial")
        shutil.rmtree(partial, ignore_errors=True)
        _say(f"kafka {version}: resolving jars from Maven Central into {libs} ...")
        started = time.monotonic()
        _run_build([mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
                    f"-DoutputDirectory={partial}"],
                   f"resolving kafka {version} with Maven")
        if not (partial / f"kafka_2.13-{version}.jar").exists():
            raise InfraError(f"Maven finished but kafka_2.13-{version}.jar is not in {partial}")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        _write_marker(marker, fingerprint, version=version)
        _say(f"kafka {version}: installed in {time.monotonic() - started:.1f}s "
             f"({len(list(libs.glob('*.jar')))} jars)")
        return libs


def _go_version(go: str) -> tuple[int, int]:
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False,
                         env={**os.environ, "GOTOOLCHAIN": "local"}).stdout.strip()
    match = re.match(r"go(\d+)\.(\d+)", out)
    if match is None:
        raise InfraError(f"cannot tell the Go version from `go env GOVERSION` = {out!r}")
    return int(match.group(1)), int(match.group(2))


_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _parse_patch(text: str, name: str) -> dict[str, list[tuple[int, list[str], list[str]]]]:
    """A unified diff's hunks by file: ``{path: [(old start line, old lines, new lines)]}``.
    Text before the first ``--- `` line is commentary."""
    files: dict[str, list[tuple[int, list[str], list[str]]]] = {}
    hunks: list[tuple[int, list[str], list[str]]] | None = None
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            path = lines[i + 1][4:].strip().split("\t")[0]
            path = path[2:] if path.startswith("b/") else path
            hunks = files.setdefault(path, [])
            i += 2
            continue
        match = _HUNK_RE.match(line)
        if match is None:
            if hunks is not None and line.strip():
                raise InfraError(f"{name}: unexpected line {i + 1}: {line!r}")
            i += 1
            continue
        if hunks is None:
            raise InfraError(f"{name}: hunk before a file header at line {i + 1}")
        old_len = int(match.group(2) or "1")
        new_len = int(match.group(4) or "1")
        old: list[str] = []
        new: list[str] = []
        i += 1
        while len(old) < old_len or len(new) < new_len:
            if i >= len(lines) or lines[i][:1] not in (" ", "-", "+"):
                raise InfraError(f"{name}: hunk at line {i} is shorter than its header says")
            kind, body = lines[i][0], lines[i][1:]
            if kind != "+":
                old.append(body)
            if kind != "-":
                new.append(body)
            i += 1
        hunks.append((int(match.group(1)), old, new))
    if not files:
        raise InfraError(f"{name}: not a unified diff")
    return files


def apply_patch(patch: Path, root: Path) -> None:
    """Apply a unified diff to the tree at ``root`` exactly: every hunk's old text must be
    at its stated line, with no fuzz and no offset, else raise (the upstream text differs
    from the one the patch was written against, so it must be looked at again)."""
    for rel, hunks in _parse_patch(patch.read_text(), patch.name).items():
        target = root / rel
        if not target.is_file():
            raise InfraError(f"{patch.name}: {rel} does not exist in {root}")
        lines = target.read_text().splitlines(keepends=True)
        shift = 0  # lines added minus lines removed by the hunks applied so far
        for start, old, new in hunks:
            if not old:
                # Nothing to compare with would let it land anywhere: patches keep context.
                raise InfraError(f"{patch.name}: a hunk of {rel} at line {start} has no "
                                 "context lines; write the patch with context")
            at = start - 1 + shift
            if lines[at : at + len(old)] != old:
                raise InfraError(f"{patch.name}: {rel} differs from the patch's text at line "
                                 f"{start}; upstream changed, update the patch")
            lines[at : at + len(old)] = new
            shift += len(new) - len(old)
        target.chmod(0o644)  # copied from the read-only module cache
        target.write_text("".join(lines))


def _patched_ferretdb_source(go: str, version: str, env: dict[str, str], patched: Path) -> None:
    """FerretDB's module source from the Go module cache (downloaded from the proxy if
    needed), copied to ``patched`` with our patches applied. Rewritten on each build (a
    few MB), under the caller's build lock."""
    result = subprocess.run([go, "mod", "download", "-json", f"{FERRETDB_MODULE}@v{version}"],
                            cwd=FERRETDB_SRC, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise InfraError(f"go mod download {FERRETDB_MODULE}@v{version} failed:\n"
                         f"{result.stdout}{result.stderr}")
    upstream = Path(json.loads(result.stdout)["Dir"])
    if patched.exists():
        shutil.rmtree(patched)
    # copyfile, not copy2: the module cache's files and directories are read-only.
    shutil.copytree(upstream, patched, copy_function=shutil.copyfile)
    for directory, _, _ in os.walk(patched):
        os.chmod(directory, 0o755)
    for patch in _ferretdb_patches():
        apply_patch(patch, patched)


def install_ferretdb() -> Path:
    """Build the embedded-FerretDB wrapper into the cache; return the binary's path.

    FerretDB is built from its module's source with our patches (``deploy/local/ferretdb/
    *.patch``, see ``_patched_ferretdb_source``) applied.

    ``GOTOOLCHAIN=local`` forbids toolchain downloads, ``-mod=readonly`` keeps the committed
    go.mod/go.sum authoritative, and ``CGO_ENABLED=0`` works because FerretDB's SQLite driver
    (modernc.org/sqlite) is pure Go, so no C compiler is needed.
    """
    _ensure_local_dir()
    version = ferretdb_version()
    binary = ferretdb_binary()
    marker = binary.with_name(binary.name + ".installed")
    fingerprint = _fingerprint(_ferretdb_inputs())
    if _marker_ok(marker, fingerprint, binary):
        _say(f"ferretdb {version}: cached at {binary}")
        return binary
    with _file_lock(CACHE_DIR / f".ferretdb-{version}.lock", f"building ferretdb {version}"):
        if _marker_ok(marker, fingerprint, binary):
            return binary
        go = _require_tool("go", "install Go >= 1.24 (https://go.dev/dl or apt)")
        have = _go_version(go)
        if have < MIN_GO:
            raise InfraError(f"FerretDB {version} needs Go >= {MIN_GO[0]}.{MIN_GO[1]}, "
                             f"found {have[0]}.{have[1]} ({go})")
        marker.unlink(missing_ok=True)
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_name(binary.name + ".partial")
        # GOWORK=off: a go.work above the checkout would refuse the build's -modfile.
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOWORK": "off", "GOFLAGS": "-mod=readonly",
               "CGO_ENABLED": "0"}
        _say(f"ferretdb {version}: building {binary} with Go {have[0]}.{have[1]} "
             "(first build takes 1-3 min) ...")
        started = time.monotonic()
        # The committed go.mod plus a `replace` by the patched copy, in a go.mod of the
        # build's own (go.mod stays buildable as it is, with upstream FerretDB).
        # Named like the binary: worktrees with other patches keep their own copies.
        source = CACHE_DIR / "src" / binary.name
        _patched_ferretdb_source(go, version, env, source)
        modfile = source.with_name(source.name + ".go.mod")
        modfile.write_text((FERRETDB_SRC / "go.mod").read_text()
                           + f"\nreplace {FERRETDB_MODULE} v{version} => {source}\n")
        shutil.copyfile(FERRETDB_SRC / "go.sum", modfile.with_suffix(".sum"))
        _run_build([go, "build", f"-modfile={modfile}", "-trimpath", "-o", str(partial), "."],
                   f"building ferretdb {version}", cwd=FERRETDB_SRC, env=env)
        os.replace(partial, binary)
        _write_marker(marker, fingerprint, version=version)
        _say(f"ferretdb {version}: built in {time.monotonic() - started:.1f}s")
        return binary


def install(which: str = "all") -> None:
    """Install ``kafka``, ``ferretdb`` or ``all``; a no-op (milliseconds) when cached."""
    for name in _expand(which):
        if name == "kafka":
            install_kafka()
        else:
            install_ferretdb()


def _expand(which: str) -> tuple[str, ...]:
    if which == "all":
        return SERVERS
    if which not in SERVERS:
        raise InfraError(f"unknown server {which!r}: expected one of {', '.join(SERVERS)} or all")
    return (which,)


# --------------------------------------------------------------------------------------------
# Processes, ports, pidfiles
# --------------------------------------------------------------------------------------------


# Ports free_port has returned in this process: callers often draw several before binding any
# (a test stack's API and probe ports), and the kernel offers a released port again at once.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that this process has not been
    given before (for test fixtures and benches)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _port_in_use(port: int) -> bool:
    """True if something listens on 127.0.0.1:port (or on 0.0.0.0:port).

    Binding with SO_REUSEADDR ignores TIME_WAIT leftovers of a server we just stopped, the same
    way the servers themselves bind, so only a live listener counts as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie still answers kill(pid, 0))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the server's process group (it leads its own session), else just the pid."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_exit(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Wait for the process to end (reaping it if it is our child); True if it did."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            try:
                proc.wait(timeout=0.1)
                return True
            except subprocess.TimeoutExpired:
                pass
        elif not _pid_alive(pid):
            return True
        else:
            time.sleep(0.1)
        if time.monotonic() >= deadline:
            return False


def _terminate(name: str, pid: int, proc: subprocess.Popen[bytes] | None,
               timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the group, wait up to ``timeout``, then SIGKILL: graceful first, certain last."""
    _signal_group(pid, signal.SIGTERM)
    if _wait_exit(pid, proc, timeout):
        return
    _say(f"{name} (pid {pid}) still running {timeout:.0f}s after SIGTERM: sending SIGKILL")
    _signal_group(pid, signal.SIGKILL)
    if not _wait_exit(pid, proc, 10.0):
        raise InfraError(f"{name} (pid {pid}) survived SIGKILL")


def _wait_ports_free(ports: Sequence[int], timeout: float = PORT_RELEASE_TIMEOUT) -> list[int]:
    """Wait until nothing listens on ``ports``; return those still busy at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [port for port in ports if port and _port_in_use(port)]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.1)


@dataclass(frozen=True)
class PidRecord:
    """What ``<data dir>/<server>.pid`` (JSON) remembers about a running server."""

    name: str
    pid: int
    ports: tuple[int, ...]
    address: str
    log_path: Path

    @property
    def port(self) -> int:
        return self.ports[0]


def _pidfile(name: str, data_dir: Path) -> Path:
    return data_dir / f"{name}.pid"


def _write_pidfile(record: PidRecord, data_dir: Path) -> None:
    path = _pidfile(record.name, data_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": record.pid, "ports": list(record.ports),
                               "address": record.address, "log": str(record.log_path)}) + "\n")
    os.replace(tmp, path)


def _read_pidfile(name: str, data_dir: Path) -> PidRecord | None:
    try:
        raw = json.loads(_pidfile(name, data_dir).read_text())
        return PidRecord(name=name, pid=int(raw["pid"]), ports=tuple(int(p) for p in raw["ports"]),
                         address=str(raw["address"]), log_path=Path(raw["log"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _owned_by(record: PidRecord, data_dir: Path) -> bool:
    """Is ``record.pid`` still our server? Guards against pid reuse after a reboot/crash."""
    if not _pid_alive(record.pid):
        return False
    args = _cmdline(record.pid)
    kind = "kafka.Kafka" if record.name == "kafka" else "runstore-ferretdb"
    return any(kind in arg for arg in args) and any(str(data_dir) in arg for arg in args)


def _remove_pidfile(name: str, data_dir: Path, pid: int) -> None:
    """Remove the pidfile only if it still describes ``pid`` (a newer start may own it)."""
    record = _read_pidfile(name, data_dir)
    if record is None or record.pid == pid:
        _pidfile(name, data_dir).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Readiness probes (wire protocols by hand: the module must not need kafka/pymongo packages)
# --------------------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _kafka_call(sock: socket.socket, api_key: int, api_version: int, correlation_id: int,
                body: bytes) -> bytes:
    """One Kafka request with a v1 header (non-flexible); returns the response body."""
    client_id = b"runstore-infra"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    message = header + body
    sock.sendall(struct.pack(">i", len(message)) + message)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    payload = _recv_exact(sock, size)
    (got,) = struct.unpack_from(">i", payload)
    if got != correlation_id:
        raise ConnectionError(f"correlation id {got} != {correlation_id}")
    return payload[4:]


def kafka_probe(port: int, timeout: float = 2.0) -> bool:
    """True once the broker answers ApiVersions and lists itself in Metadata.

    ApiVersions v0 proves the request path works; Metadata v0 (empty topic list = all topics)
    proves the broker is registered with the controller and advertises this port, which is
    what clients need before they can produce or join a group.
    """
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            body = _kafka_call(sock, api_key=18, api_version=0, correlation_id=1, body=b"")
            error_code, count = struct.unpack_from(">hi", body)
            if error_code != 0 or count <= 0:
                return False
            body = _kafka_call(sock, api_key=3, api_version=0, correlation_id=2,
                               body=struct.pack(">i", 0))
            (brokers,) = struct.unpack_from(">i", body)
            offset = 4
            for _ in range(brokers):
                _node_id, host_len = struct.unpack_from(">ih", body, offset)
                offset += 6 + host_len
                (broker_port,) = struct.unpack_from(">i", body, offset)
                offset += 4
                if broker_port == port:
                    return True
            return False
    except (OSError, ConnectionError, struct.error):
        return False


def _bson_encode(doc: dict[str, Any]) -> bytes:
    """Minimal BSON writer: str, bool, int and float values are all a handshake needs."""
    out = bytearray()
    for key, value in doc.items():
        name = key.encode() + b"\0"
        if isinstance(value, bool):
            out += b"\x08" + name + (b"\x01" if value else b"\x00")
        elif isinstance(value, int) and -(2**31) <= value < 2**31:
            out += b"\x10" + name + struct.pack("<i", value)
        elif isinstance(value, int):
            out += b"\x12" + name + struct.pack("<q", value)
        elif isinstance(value, float):
            out += b"\x01" + name + struct.pack("<d", value)
        elif isinstance(value, str):
            data = value.encode() + b"\0"
            out += b"\x02" + name + struct.pack("<i", len(data)) + data
        else:
            raise TypeError(f"cannot BSON-encode {type(value).__name__}")
    return struct.pack("<i", len(out) + 5) + bytes(out) + b"\0"


def _bson_decode(data: bytes, offset: int = 0) -> dict[str, Any]:
    """Minimal BSON reader for handshake replies (common scalar types, nested docs/arrays)."""
    (size,) = struct.unpack_from("<i", data, offset)
    end = offset + size - 1
    pos = offset + 4
    result: dict[str, Any] = {}
    while pos < end:
        kind = data[pos]
        name_end = data.index(b"\0", pos + 1)
        key = data[pos + 1:name_end].decode()
        pos = name_end + 1
        value: Any
        if kind == 0x01:
            (value,) = struct.unpack_from("<d", data, pos)
            pos += 8
        elif kind == 0x02:
            (length,) = struct.unpack_from("<i", data, pos)
            value = data[pos + 4:pos + 3 + length].decode(errors="replace")
            pos += 4 + length
        elif kind in (0x03, 0x04):
            (length,) = struct.unpack_from("<i", data, pos)
            inner = _bson_decode(data, pos)
            value = list(inner.values()) if kind == 0x04 else inner
            pos += length
        elif kind == 0x05:
            (length,) = struct.unpack_from("<i", data, pos)
            value = data[pos + 5:pos + 5 + length]
            pos += 5 + length
        elif kind == 0x07:
            value = data[pos:pos + 12].hex()
            pos += 12
        elif kind == 0x08:
            value = data[pos] == 1
            pos += 1
        elif kind in (0x09, 0x11, 0x12):
            (value,) = struct.unpack_from("<q", data, pos)
            pos += 8
        elif kind in (0x0A, 0x06, 0xFF, 0x7F):
            value = None
        elif kind == 0x10:
            (value,) = struct.unpack_from("<i", data, pos)
            pos += 4
        else:
            raise ValueError(f"unsupported BSON type 0x{kind:02x} for key {key!r}")
        result[key] = value
    return result


def mongo_hello(port: int, timeout: float = 2.0) -> dict[str, Any]:
    """Send ``{hello: 1}`` as an OP_MSG and return the reply document."""
    body = struct.pack("<I", 0) + b"\x00" + _bson_encode({"hello": 1, "$db": "admin"})
    request_id = int.from_bytes(os.urandom(3), "little")
    header = struct.pack("<iiii", 16 + len(body), request_id, 0, 2013)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(header + body)
        length, _, response_to, opcode = struct.unpack("<iiii", _recv_exact(sock, 16))
        payload = _recv_exact(sock, length - 16)
    if opcode != 2013 or response_to != request_id or payload[4] != 0:
        raise ConnectionError(f"unexpected reply (opcode {opcode}, responseTo {response_to})")
    return _bson_decode(payload, 5)


def mongo_probe(port: int, timeout: float = 2.0) -> bool:
    """True once the server completes a MongoDB ``hello`` round trip with ``ok: 1``."""
    try:
        return mongo_hello(port, timeout).get("ok") in (1, 1.0)
    except (OSError, ConnectionError, ValueError, struct.error, IndexError):
        return False


# --------------------------------------------------------------------------------------------
# Starting, readiness, stopping
# --------------------------------------------------------------------------------------------


class _LogWatcher:
    """Incrementally scans a log from a start offset for a pattern (ignores earlier runs)."""

    def __init__(self, path: Path, pattern: re.Pattern[bytes]) -> None:
        self.path = path
        self.pattern = pattern
        self.offset = path.stat().st_size if path.exists() else 0
        self.buffer = b""
        self.match: re.Match[bytes] | None = None

    def poll(self) -> re.Match[bytes] | None:
        if self.match is None:
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(self.offset)
                    chunk = handle.read()
            except FileNotFoundError:
                return None
            self.offset += len(chunk)
            # Keep whole lines only once matched; a partial last line is rescanned next poll.
            self.buffer = (self.buffer + chunk)[-65536:]
            self.match = self.pattern.search(self.buffer)
        return self.match


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, since: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines written after byte ``since`` (earlier runs are noise)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(since, _size(path) - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:]) or "(nothing logged by this run)"


@dataclass
class ServerHandle:
    """A running local server. ``stop()`` is idempotent; usable as a context manager."""

    name: str
    pid: int
    port: int
    address: str
    log_path: Path
    data_dir: Path
    ports: tuple[int, ...] = ()
    ready_seconds: float = 0.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return _pid_alive(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait ``timeout``, SIGKILL; return once the process is gone and ports free."""
        if self.is_running():
            _say(f"stopping {self.name} (pid {self.pid}, port {self.port}) ...")
            _terminate(self.name, self.pid, self._proc, timeout)
        elif self._proc is not None:
            self._proc.wait()
        _remove_pidfile(self.name, self.data_dir, self.pid)
        busy = _wait_ports_free(self.ports or (self.port,))
        if busy:
            raise InfraError(f"{self.name} stopped but port(s) {busy} are still in use")

    def wait(self) -> int:
        """Block until the server exits; return its exit code (foreground mode)."""
        if self._proc is not None:
            return self._proc.wait()
        while _pid_alive(self.pid):
            time.sleep(0.5)
        return 0

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class _Launch:
    """Everything ``_start`` needs to run one server kind."""

    name: str
    data_dir: Path
    ports: tuple[int, ...]           # first = client port; 0 = let the server pick (FerretDB)
    cmd: list[str]
    log_path: Path                   # where readiness lines appear
    console_path: Path               # the process's stdout+stderr
    ready_re: re.Pattern[bytes]
    probe: Callable[[int], bool]
    address: Callable[[int], str]
    timeout: float
    prepare: Callable[[], None] = lambda: None


def _abort(launch: _Launch, port: int, pid: int | None, proc: subprocess.Popen[bytes] | None,
           reason: str, since: dict[Path, int] | None = None) -> InfraError:
    """Kill a half-started server; return an error naming the server, port and log tail.

    ``since`` maps each log to its size before this start, so only this run's lines show.
    """
    since = since or {}
    if pid is not None and (proc is None or proc.poll() is None):
        with contextlib.suppress(InfraError):
            _terminate(launch.name, pid, proc, timeout=5.0)
    if pid is not None:
        _remove_pidfile(launch.name, launch.data_dir, pid)
    parts = [f"{launch.name} failed to start on {HOST}:{port}: {reason}",
             f"log: {launch.log_path}",
             f"--- last {LOG_TAIL_LINES} lines of {launch.log_path} ---",
             _tail(launch.log_path, since.get(launch.log_path, 0))]
    console_since = since.get(launch.console_path, 0)
    if launch.console_path != launch.log_path and _size(launch.console_path) > console_since:
        parts += [f"--- last {LOG_TAIL_LINES} lines of {launch.console_path} ---",
                  _tail(launch.console_path, console_since)]
    return InfraError("\n".join(parts))


def _wait_ready(launch: _Launch, watcher: _LogWatcher | None, pid: int,
                proc: subprocess.Popen[bytes] | None, started: float,
                since: dict[Path, int] | None = None) -> int:
    """Wait for the ready line (unless ``watcher`` is None) and a successful protocol probe.

    The log line alone can precede the listener; the probe alone can succeed against a
    broker that is still fencing. Both together mean clients will work. Returns the port.
    """
    deadline = started + launch.timeout
    port = launch.ports[0]
    while True:
        exited = proc.poll() is not None if proc is not None else not _pid_alive(pid)
        if exited:
            code = f" with code {proc.returncode}" if proc is not None else ""
            raise _abort(launch, port, pid, proc, f"process {pid} exited{code} before it was ready",
                         since)
        match = watcher.poll() if watcher is not None else None
        line_seen = watcher is None or match is not None
        if match is not None and match.groups():
            port = int(match.group(1))
        if line_seen and launch.probe(port):
            return port
        if time.monotonic() >= deadline:
            what = "protocol probe" if line_seen else "ready line in the log"
            raise _abort(launch, port, pid, proc,
                         f"not ready after {launch.timeout:g}s (waiting for the {what})", since)
        time.sleep(0.2)


def _start(launch: _Launch) -> ServerHandle:
    """Start (or adopt an already running) server and return once it answers its protocol."""
    data_dir = launch.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir / f".{launch.name}.lock", f"{launch.name} in {data_dir}"):
        record = _read_pidfile(launch.name, data_dir)
        if record is not None and _owned_by(record, data_dir):
            wanted = launch.ports[0]
            if wanted and record.port != wanted:
                raise InfraError(
                    f"{launch.name} from {data_dir} is already running on port {record.port} "
                    f"(pid {record.pid}), not {wanted}: stop it first or use another --data-dir")
            started = time.monotonic()
            if not launch.probe(record.port):
                _say(f"{launch.name} (pid {record.pid}) is running but not answering yet: "
                     "waiting ...")
                _wait_ready(replace(launch, ports=record.ports), None, record.pid, None, started)
            _say(f"{launch.name} already running: pid {record.pid}, {record.address}, "
                 f"log {record.log_path}")
            return ServerHandle(launch.name, record.pid, record.port, record.address,
                                record.log_path, data_dir, record.ports)
        if record is not None:
            _say(f"{launch.name}: removing stale pidfile (pid {record.pid} is gone)")
            _pidfile(launch.name, data_dir).unlink(missing_ok=True)

        for port in launch.ports:
            if port and _port_in_use(port):
                raise InfraError(
                    f"cannot start {launch.name}: port {port} on {HOST} is already in use by "
                    f"another process (see `ss -ltnp 'sport = :{port}'`); log would be "
                    f"{launch.log_path}")

        launch.prepare()
        since = {path: _size(path) for path in (launch.log_path, launch.console_path)}
        watcher = _LogWatcher(launch.log_path, launch.ready_re)
        _say(f"starting {launch.name} on {HOST}:{launch.ports[0] or '<auto>'} "
             f"(data {data_dir}, log {launch.log_path}) ...")
        started = time.monotonic()
        with open(launch.console_path, "ab") as console:
            proc = subprocess.Popen(launch.cmd, cwd=data_dir, stdin=subprocess.DEVNULL,
                                    stdout=console, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        first_port = launch.ports[0]
        _write_pidfile(PidRecord(launch.name, proc.pid, launch.ports,
                                 launch.address(first_port), launch.log_path), data_dir)
        try:
            port = _wait_ready(launch, watcher, proc.pid, proc, started, since)
        except BaseException as exc:
            if not isinstance(exc, InfraError):      # Ctrl-C etc.: never leave it half-started
                _abort(launch, first_port, proc.pid, proc, f"interrupted ({exc!r})", since)
            raise
        ports = (port, *launch.ports[1:])
        address = launch.address(port)
        _write_pidfile(PidRecord(launch.name, proc.pid, ports, address, launch.log_path),
                       data_dir)
        elapsed = time.monotonic() - started
        _say(f"{launch.name} ready on {address} in {elapsed:.1f}s (pid {proc.pid})")
        return ServerHandle(launch.name, proc.pid, port, address, launch.log_path, data_dir,
                            ports, elapsed, proc)


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def _new_cluster_id() -> str:
    """Kafka's format: URL-safe base64 of 16 random bytes, unpadded; never starting with '-'
    (it would be parsed as an option by kafka-storage)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    """Single-node KRaft settings: every internal topic at RF 1, no rebalance delay, and no
    auto-created topics (the services create theirs with explicit partition counts)."""
    log_dirs = data_dir / "kraft-logs"
    return "\n".join([
        "# Generated by deploy/local/infra.py on every start: edit the generator, not this file.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{HOST}:{controller_port}",
        "controller.listener.names=CONTROLLER",
        f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        f"advertised.listeners=PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={log_dirs}",
        "num.partitions=12",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=4",
        # The controller appends a no-op record to the metadata log every 500 ms by default
        # so that other nodes can tell it is alive; a single node has no one to tell, and
        # each append is a log write the broker's metadata loader then replays (idle broker
        # CPU -3.5 ms/s measured, docs/write-path-cost.md).
        "metadata.max.idle.interval.ms=5000",
        *_extra_kafka_properties(),
        "",
    ])


def _extra_kafka_properties() -> list[str]:
    """``RUNSTORE_KAFKA_PROPERTIES`` (``key=value`` pairs separated by spaces or commas):
    appended after the settings above, so a key given there overrides its default (the
    last occurrence of a key wins when Kafka reads the file). For trying broker settings
    in the benchmarks without editing this file."""
    extra = os.environ.get("RUNSTORE_KAFKA_PROPERTIES", "").replace(",", " ").split()
    for pair in extra:
        if "=" not in pair:
            raise InfraError(f"RUNSTORE_KAFKA_PROPERTIES: {pair!r} is not key=value")
    return ["# RUNSTORE_KAFKA_PROPERTIES", *extra] if extra else []


def _kafka_java_cmd(libs: Path, data_dir: Path, heap: Sequence[str], main: str,
                    *args: str) -> list[str]:
    jvm = tuple(os.environ.get("KAFKA_JVM_PERFORMANCE_OPTS", "").split()) or DEFAULT_KAFKA_JVM_OPTS
    return [
        _java(), *heap, *jvm,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration={KAFKA_LOG4J.as_uri()}",
        f"-Dkafka.logs.dir={data_dir}",
        "-cp", f"{libs}/*", main, *args,
    ]


def _format_kafka_storage(libs: Path, data_dir: Path, props: Path) -> None:
    """Format the KRaft log dir once; the cluster id is kept in ``<data dir>/cluster.id``."""
    if (data_dir / "kraft-logs" / "meta.properties").exists():
        return
    id_file = data_dir / "cluster.id"
    if not id_file.exists():
        id_file.write_text(_new_cluster_id() + "\n")
    cluster_id = id_file.read_text().strip()
    _say(f"kafka: formatting storage in {data_dir / 'kraft-logs'} (cluster id {cluster_id})")
    _run_build(_kafka_java_cmd(libs, data_dir, ("-Xmx256m",), "kafka.tools.StorageTool",
                               "format", "-t", cluster_id, "-c", str(props),
                               "--ignore-formatted"),
               "kafka storage format", cwd=data_dir)


def start_kafka(port: int = DEFAULT_KAFKA_PORT, controller_port: int | None = None,
                data_dir: Path | None = None,
                timeout: float = KAFKA_START_TIMEOUT) -> ServerHandle:
    """Start a single-node KRaft Kafka on 127.0.0.1 (installing it if needed).

    ``controller_port`` defaults to ``port + 1``. Heap defaults to 768 MB; set
    ``KAFKA_HEAP_OPTS`` (as with Kafka's own scripts) to change it, and
    ``KAFKA_JVM_PERFORMANCE_OPTS`` to replace the JIT and GC flags
    (``DEFAULT_KAFKA_JVM_OPTS``).
    """
    if port <= 0:
        raise InfraError("kafka needs an explicit port (advertised listeners must be known)")
    controller_port = controller_port or port + 1
    if controller_port == port:
        raise InfraError("kafka port and controller port must differ")
    data_dir = (data_dir or default_data_dir("kafka")).resolve()
    libs = install_kafka()
    props = data_dir / "server.properties"
    heap = tuple(os.environ.get("KAFKA_HEAP_OPTS", "").split()) or DEFAULT_KAFKA_HEAP

    def prepare() -> None:
        props.write_text(kafka_server_properties(port, controller_port, data_dir))
        _format_kafka_storage(libs, data_dir, props)

    return _start(_Launch(
        name="kafka", data_dir=data_dir, ports=(port, controller_port),
        cmd=_kafka_java_cmd(libs, data_dir, heap, "kafka.Kafka", str(props)),
        log_path=data_dir / "kafka.log", console_path=data_dir / "kafka.console.log",
        ready_re=KAFKA_READY_RE, probe=kafka_probe, address=lambda p: f"{HOST}:{p}",
        timeout=timeout, prepare=prepare,
    ))


# --------------------------------------------------------------------------------------------
# FerretDB
# --------------------------------------------------------------------------------------------


def start_ferretdb(port: int = DEFAULT_MONGO_PORT, data_dir: Path | None = None,
                   timeout: float = FERRETDB_START_TIMEOUT,
                   log_level: str = "info",
                   postgresql_url: str | None = None) -> ServerHandle:
    """Start FerretDB on 127.0.0.1 (building it if needed).

    ``port=0`` lets the server pick a free port (read back from the URI it prints). SQLite
    files go to ``<data dir>/db/`` (one ``<database>.sqlite`` per MongoDB database). With
    ``postgresql_url`` (``postgres://user@host:port/db``, an existing database) FerretDB
    stores in PostgreSQL instead (its ``postgresql`` handler; docs/local-store.md).
    With ``RUNSTORE_FERRETDB_DEBUG_ADDR=host:port`` set, the server also serves Go's
    profiles there (``/debug/pprof/``; docs/soak.md). ``RUNSTORE_FERRETDB_SQLITE_PARAMS``
    (e.g. ``_pragma=mmap_size(268435456)``) is appended to the SQLite URL's query (the
    wrapper's ``--sqlite-params``), to try SQLite settings (docs/soak.md).
    """
    data_dir = (data_dir or default_data_dir("ferretdb")).resolve()
    debug_addr = os.environ.get("RUNSTORE_FERRETDB_DEBUG_ADDR")
    sqlite_params = os.environ.get("RUNSTORE_FERRETDB_SQLITE_PARAMS")
    binary = install_ferretdb()
    db_dir = data_dir / "db"
    log_path = data_dir / "ferretdb.log"
    return _start(_Launch(
        name="ferretdb", data_dir=data_dir, ports=(port,),
        cmd=[str(binary), f"--addr={HOST}:{port}", f"--data-dir={db_dir}",
             f"--log-level={log_level}",
             *([f"--debug-addr={debug_addr}"] if debug_addr else []),
             *([f"--sqlite-params={sqlite_params}"] if sqlite_params else []),
             *(["--handler=postgresql", f"--postgresql-url={postgresql_url}"]
               if postgresql_url else [])],
        log_path=log_path, console_path=log_path,
        ready_re=FERRETDB_URI_RE, probe=mongo_probe,
        address=lambda p: f"mongodb://{HOST}:{p}/", timeout=timeout,
        prepare=lambda: db_dir.mkdir(parents=True, exist_ok=True),
    ))


# --------------------------------------------------------------------------------------------
# Stop and status (work from any process: they go through the pidfile)
# --------------------------------------------------------------------------------------------


def stop(name: str, data_dir: Path | None = None, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the server recorded in ``data_dir``; True if one was running. Idempotent."""
    data_dir = (data_dir or default_data_dir(name)).resolve()
    if not data_dir.exists():
        _say(f"{name}: not running (no data dir {data_dir})")
        return False
    with _file_lock(data_dir / f".{name}.lock", f"{name} in {data_dir}"):
        record = _read_pidfile(name, data_dir)
        if record is None or not _owned_by(record, data_dir):
            if record is not None:
                _pidfile(name, data_dir).unlink(missing_ok=True)
            _say(f"{name}: not running ({data_dir})")
            return False
        handle = ServerHandle(name, record.pid, record.port, record.address, record.log_path,
                              data_dir, record.ports)
        started = time.monotonic()
        handle.stop(timeout)
        _say(f"{name} stopped in {time.monotonic() - started:.1f}s")
        return True


@dataclass(frozen=True)
class ServerStatus:
    name: str
    data_dir: Path
    record: PidRecord | None
    answering: bool

    def line(self) -> str:
        if self.record is None:
            return f"{self.name:<9} stopped   data={self.data_dir}"
        health = "ready" if self.answering else "NOT ANSWERING"
        return (f"{self.name:<9} running   pid={self.record.pid} address={self.record.address} "
                f"{health}  data={self.data_dir} log={self.record.log_path}")


def status(name: str, data_dir: Path | None = None) -> ServerStatus:
    data_dir = (data_dir or default_data_dir(name)).resolve()
    record = _read_pidfile(name, data_dir)
    if record is None or not _owned_by(record, data_dir):
        return ServerStatus(name, data_dir, None, False)
    probe = kafka_probe if name == "kafka" else mongo_probe
    return ServerStatus(name, data_dir, record, probe(record.port, 1.0))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def port_from_bootstrap(value: str) -> int:
    """``host:port[,host:port]`` (optionally ``PLAINTEXT://``-prefixed) -> first port."""
    first = value.split(",")[0].strip().rsplit("://", 1)[-1]
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InfraError(f"cannot read a port from RUNSTORE_KAFKA_BOOTSTRAP={value!r}")
    return int(port)


def port_from_mongo_url(value: str) -> int:
    """``mongodb://[user@]host[:port][,host2...]/...`` -> first host's port (27017 if absent)."""
    netloc = urlsplit(value).netloc.rsplit("@", 1)[-1].split(",")[0]
    _host, sep, port = netloc.rpartition(":")
    if not sep or "]" in port:
        return DEFAULT_MONGO_PORT
    if not port.isdigit():
        raise InfraError(f"cannot read a port from RUNSTORE_MONGO_URL={value!r}")
    return int(port)


def _cli_data_dir(args: argparse.Namespace, name: str) -> Path:
    """``--data-dir`` names the server's dir; with ``all`` it is the parent of ``<server>/``."""
    if args.data_dir is None:
        return default_data_dir(name)
    base = Path(args.data_dir).expanduser().resolve()
    return base / name if args.server == "all" else base


def _cli_start(args: argparse.Namespace, name: str) -> ServerHandle:
    data_dir = _cli_data_dir(args, name)
    if name == "kafka":
        port = args.port or port_from_bootstrap(
            os.environ.get("RUNSTORE_KAFKA_BOOTSTRAP", f"{HOST}:{DEFAULT_KAFKA_PORT}"))
        return start_kafka(port, args.controller_port, data_dir,
                           args.timeout or KAFKA_START_TIMEOUT)
    port = args.port if args.port is not None else port_from_mongo_url(
        os.environ.get("RUNSTORE_MONGO_URL", f"mongodb://{HOST}:{DEFAULT_MONGO_PORT}"))
    return start_ferretdb(port, data_dir, args.timeout or FERRETDB_START_TIMEOUT, args.log_level,
                          args.postgresql_url)


def _foreground(handle: ServerHandle) -> int:
    """Stay attached: forward SIGINT/SIGTERM as a graceful stop, SIGKILL after the grace time."""
    requested: list[float] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not requested:
            _say(f"{signal.Signals(signum).name}: stopping {handle.name} ...")
        requested.append(time.monotonic())
        _signal_group(handle.pid, signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    proc = handle._proc
    code = 0
    while True:
        if proc is None:
            if not _pid_alive(handle.pid):
                break
            time.sleep(0.5)
        else:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
        if requested and time.monotonic() - requested[0] > STOP_TIMEOUT:
            _say(f"{handle.name} still running {STOP_TIMEOUT:.0f}s after SIGTERM: SIGKILL")
            _signal_group(handle.pid, signal.SIGKILL)
            requested[0] = time.monotonic()
    _remove_pidfile(handle.name, handle.data_dir, handle.pid)
    _wait_ports_free(handle.ports or (handle.port,))
    _say(f"{handle.name} exited (code {code})")
    # The JVM exits 143 (128 + SIGTERM) after a graceful shutdown, also when `stop` came from
    # another shell: that is a clean stop, not a failure of `make run`.
    return 0 if requested or code in (0, 128 + signal.SIGTERM, -signal.SIGTERM) else code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infra.py", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    choices = [*SERVERS, "all"]

    p_install = sub.add_parser("install", help="download/build and cache (idempotent)")
    p_install.add_argument("server", choices=choices)

    p_start = sub.add_parser("start", help="start detached (or --foreground); wait until ready")
    p_start.add_argument("server", choices=choices)
    p_start.add_argument("--port", type=int, default=None,
                         help="client port (default: from RUNSTORE_KAFKA_BOOTSTRAP / "
                              "RUNSTORE_MONGO_URL, else 9092 / 27017; ferretdb: 0 = any)")
    p_start.add_argument("--controller-port", type=int, default=None,
                         help="kafka KRaft controller port (default: port + 1)")
    p_start.add_argument("--data-dir", default=None,
                         help="server data dir (default .local/data/<server>); "
                              "with 'all': the parent of <server>/")
    p_start.add_argument("--timeout", type=float, default=None,
                         help=f"readiness timeout in s (default kafka {KAFKA_START_TIMEOUT:.0f}, "
                              f"ferretdb {FERRETDB_START_TIMEOUT:.0f})")
    p_start.add_argument("--log-level", default="info", help="ferretdb log level (default info)")
    p_start.add_argument("--postgresql-url", default=None,
                         help="ferretdb: store in this PostgreSQL database (postgres://user@"
                              "host:port/db, must exist) instead of SQLite; "
                              "see docs/local-store.md")
    p_start.add_argument("--foreground", action="store_true",
                         help="stay attached; Ctrl-C/SIGTERM stops the server")

    for command, text in (("stop", "SIGTERM, wait 20 s, SIGKILL (idempotent)"),
                          ("status", "one line per server")):
        p = sub.add_parser(command, help=text)
        p.add_argument("server", choices=choices, nargs="?" if command == "status" else None,
                       default="all")
        p.add_argument("--data-dir", default=None,
                       help="server data dir; with 'all': the parent of <server>/")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "install":
            install(args.server)
        elif args.command == "start":
            if args.server == "all" and (args.port is not None or args.controller_port
                                         or args.foreground):
                raise InfraError("--port/--controller-port/--foreground need a single server")
            if args.controller_port and args.server != "kafka":
                raise InfraError("--controller-port only applies to kafka")
            handles = [_cli_start(args, name) for name in _expand(args.server)]
            for handle in handles:
                print(handle.address, flush=True)
            if args.foreground:
                return _foreground(handles[0])
        elif args.command == "stop":
            for name in _expand(args.server):
                stop(name, _cli_data_dir(args, name))
        else:
            for name in _expand(args.server):
                print(status(name, _cli_data_dir(args, name)).line())
    except InfraError as exc:
        print(f"[infra] ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("[infra] interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
