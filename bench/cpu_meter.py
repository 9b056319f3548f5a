"""CPU accounting for the benchmarks: how much CPU each process of the stack spent."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def user_sys(pid: int) -> tuple[float, float]:
    """Seconds of user and system CPU of `pid` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def loadavg() -> str:
    """The 1-minute load average, as /proc/loadavg prints it."""
    return Path("/proc/loadavg").read_text().split()[0]


def py_spy(
    pid: int, seconds: float, out: Path, rate: int, threads: bool = False
) -> subprocess.Popen[bytes]:
    """A py-spy recording of `pid` for `seconds` into `out` (raw format, native frames),
    as a started subprocess (bench extras install py-spy beside the interpreter)."""
    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid)]
    cmd += ["-d", str(int(seconds)), "-r", str(rate), "-f", "raw", "--native"]
    cmd += ["--threads"] if threads else []
    cmd += ["-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _children() -> dict[int, list[int]]:
    """Every live process's children, from the ppid field of /proc/<pid>/stat."""
    tree: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(proc.name))
    return tree


def tree_cpu_seconds(pid: int, tree: dict[int, list[int]] | None = None) -> float:
    """CPU time of a process and of all its descendants, live or reaped: servers such as
    PostgreSQL do their work in one child process per connection. A child that exits
    between two readings moves its time into its parent's reaped-children counters, so a
    difference of two readings stays right."""
    tree = _children() if tree is None else tree
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu_seconds(current)
        todo.extend(tree.get(current, ()))
    return total


class CpuMeter:
    """CPU seconds used by named processes (each with its descendants) between `begin()`
    and `end()`. The benchmark's own process is named `alone`: counted without its
    descendants, which are the servers it started and are metered under their names."""

    def __init__(self, pids: dict[str, int], alone: str = "bench client") -> None:
        self.pids = pids
        self.alone = alone
        self._at: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.running = False

    def begin(self) -> None:
        self.running = True
        self._at = self._read()

    def end(self) -> None:
        self.running = False
        now = self._read()
        self.used = {name: now[name] - self._at.get(name, 0.0) for name in self.pids}

    def _read(self) -> dict[str, float]:
        tree = _children()
        return {
            name: cpu_seconds(pid) if name == self.alone else tree_cpu_seconds(pid, tree)
            for name, pid in self.pids.items()
        }


def tcp_sockets() -> Iterator[list[str]]:
    """The fields of every row of /proc/net/tcp and /proc/net/tcp6 (1: local address,
    2: remote address, 3: state, 9: inode; addresses as hex `ip:port`)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            yield line.split()


def tcp_port(address: str) -> int:
    """The port of a /proc/net/tcp address (hex `ip:port`)."""
    return int(address.rsplit(":", 1)[1], 16)


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port (for servers the caller did not start),
    found through /proc: the socket's inode in /proc/net/tcp*, then whose fd it is."""
    inodes: set[str] = set()
    for fields in tcp_sockets():
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and tcp_port(local) == port:  # 0A: LISTEN
            inodes.add(inode)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(proc.name)
        except OSError:
            continue
    return None


def kafka_pid(bootstrap: str) -> int | None:
    """The local Kafka broker serving the first address of `bootstrap`, if any."""
    return listening_pid(urlsplit(f"//{bootstrap.split(',')[0]}").port or 9092)


def mongo_pid(url: str) -> int | None:
    """The local MongoDB-protocol server of a `mongodb://` URL, if any."""
    return listening_pid(urlsplit(url).port or 27017)


class CollectorPasses:
    """This process's garbage collector passes while it is installed (gc.callbacks): the
    CPU time they took in all (`cpu_seconds`) and the longest one's wall time
    (`longest_ms`, how long it stopped the process's event loop)."""

    def __init__(self) -> None:
        self.cpu_seconds = 0.0
        self.longest_ms = 0.0
        self._cpu_began = 0.0
        self._began = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._cpu_began, self._began = time.process_time(), time.perf_counter()
        else:
            self.cpu_seconds += time.process_time() - self._cpu_began
            self.longest_ms = max(self.longest_ms, (time.perf_counter() - self._began) * 1000)

    def stop(self) -> None:
        gc.callbacks.remove(self._note)
