"""The load generator every row of bench/http_gateway.py shares: N client loops, a
measured window after a warm-up, latency percentiles and CPU per start (bench/cpu_meter.py),
and a minimal keep-alive HTTP/1.1 client cheap enough not to be the bottleneck."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cpu_meter import CpuMeter


@dataclass
class Result:
    name: str
    starts: int = 0
    seconds: float = 0.0
    start_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    errors: int = 0
    note: str = ""
    offered: float = 0.0
    """The starts/s a paced run was offered (0: a closed loop)."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU time each process spent during the measured window of the rate phase."""

    @property
    def rate(self) -> float:
        return self.starts / self.seconds if self.seconds else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pacer(rate: float) -> Callable[[], Awaitable[None]]:
    """Waits so that the calls together go at most `rate` per second (0: no limit)."""
    next_at = 0.0

    async def pace() -> None:
        nonlocal next_at
        if rate <= 0:
            return
        now = asyncio.get_running_loop().time()
        at = max(now, next_at)
        next_at = at + 1 / rate
        await asyncio.sleep(at - now)

    return pace


async def drive(
    name: str,
    clients: int,
    seconds: float,
    warmup: float,
    start: Callable[[int], Awaitable[str]],
    read: Callable[[int, str], Awaitable[None]] | None,
    cpu: CpuMeter | None = None,
    pace: Callable[[], Awaitable[None]] | None = None,
) -> Result:
    """`clients` loops of start (then read, if given); what ends after the warm-up counts.
    With `pace` (a `pacer`), each loop waits for it before a start, and the start's
    latency counts from the end of that wait (the server's time at the paced load)."""
    result = Result(name)
    t0 = time.perf_counter()
    counting_from = t0 + warmup
    stop_at = counting_from + seconds

    async def meter() -> None:
        if cpu is None:
            return
        await asyncio.sleep(warmup)
        cpu.begin()
        await asyncio.sleep(seconds)
        cpu.end()
        result.cpu_seconds = cpu.used

    async def loop(worker: int) -> None:
        while True:
            if pace is not None:
                await pace()
            now = time.perf_counter()
            if now >= stop_at:
                return
            try:
                ident = await start(worker)
                started = time.perf_counter()
                if read is not None:
                    await read(worker, ident)
                done = time.perf_counter()
            except Exception as exc:
                result.errors += 1
                if result.errors <= 3:
                    print(f"  {name}: {type(exc).__name__}: {exc}", flush=True)
                await asyncio.sleep(0.05)
                continue
            if now >= counting_from and done <= stop_at:
                result.starts += 1
                result.start_ms.append((started - now) * 1000)
                if read is not None:
                    result.read_ms.append((done - started) * 1000)

    await asyncio.gather(meter(), *(loop(i) for i in range(clients)))
    result.seconds = seconds
    return result


async def measure(
    name: str,
    clients: int,
    seconds: float,
    warmup: float,
    start: Callable[[int], Awaitable[str]],
    read: Callable[[int, str], Awaitable[None]],
    cpu: CpuMeter | None = None,
    rate_limit: float = 0,
) -> Result:
    """Two phases: starts only (the rate, start latency), then start + read right after it
    (the read latency; its rate is not reported: reads are not starts). `rate_limit`
    (0: none) paces the starts of both phases to at most that many per second."""
    rate = await drive(name, clients, seconds, warmup, start, None, cpu, pacer(rate_limit))
    reads = await drive(
        name, clients, max(seconds / 2, 5.0), 1.0, start, read, pace=pacer(rate_limit)
    )
    rate.read_ms = reads.read_ms
    rate.errors += reads.errors
    return rate


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: the benchmark measures the server, so the
    client must cost far less than it (a general-purpose client costs about as much)."""

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"{self.auth}Accept: application/json\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write((head + "\r\n").encode() + (body or b""))
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
