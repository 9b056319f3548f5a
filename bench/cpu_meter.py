"""CPU accounting for the benchmarks: how much CPU each process of the stack spent."""

from __future__ import annotations

import os
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


class CpuMeter:
    """CPU seconds used by named processes between `begin()` and `end()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._at: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.running = False

    def begin(self) -> None:
        self.running = True
        self._at = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def end(self) -> None:
        self.running = False
        self.used = {n: cpu_seconds(p) - self._at.get(n, 0.0) for n, p in self.pids.items()}


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port (for servers the caller did not start),
    found through /proc: the socket's inode in /proc/net/tcp*, then whose fd it is."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
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
