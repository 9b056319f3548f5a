"""Liveness and readiness of a service, and the small HTTP port that serves them (with
`/metrics`) for the services that have no HTTP API of their own (engine, projector,
and later timers and workers).

    health = Health(settings, mongo_client)           # once, when wiring the app
    health.assigned()                                 # from the rebalance listener
    server = await serve_health(health, port)         # non-HTTP services only

`/healthz` answers 200 while the process runs its event loop. `/readyz` answers 200 when
MongoDB answers a ping, Kafka answers a metadata request and (for consumers) the group
has given this instance an assignment (possibly empty: more instances than partitions);
otherwise 503 with what failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiokafka import AIOKafkaClient
from pymongo import AsyncMongoClient

from services.common.metrics import exposition
from services.common.settings import RunstoreSettings

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 3.0


class Health:
    def __init__(
        self,
        settings: RunstoreSettings,
        mongo: AsyncMongoClient[Any],
        *,
        consumer: bool = True,
    ) -> None:
        self._settings = settings
        self._mongo = mongo
        self._needs_assignment = consumer
        self._assigned = False
        self._kafka: AIOKafkaClient | None = None

    def assigned(self) -> None:
        """The consumer group has given this instance its partitions."""
        self._assigned = True

    async def _kafka_ok(self) -> None:
        if self._kafka is None:
            client = AIOKafkaClient(bootstrap_servers=self._settings.kafka_bootstrap)
            await client.bootstrap()
            self._kafka = client
        await self._kafka.fetch_all_metadata()

    async def _mongo_ok(self) -> None:
        await self._mongo.admin.command("ping")

    async def readiness(self) -> dict[str, str]:
        """Each check's result: "ok" or why not."""
        checks: dict[str, str] = {}
        for name, check in (("mongodb", self._mongo_ok), ("kafka", self._kafka_ok)):
            try:
                await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
                checks[name] = "ok"
            except Exception as exc:  # any failure makes the service unready; say which
                checks[name] = f"{type(exc).__name__}: {exc}"[:200]
                if name == "kafka" and self._kafka is not None:
                    await self._kafka.close()
                    self._kafka = None
        if self._needs_assignment:
            checks["consumer"] = "ok" if self._assigned else "no partitions assigned yet"
        return checks

    async def close(self) -> None:
        if self._kafka is not None:
            await self._kafka.close()
            self._kafka = None


async def answer(health: Health, path: str) -> tuple[int, str, bytes]:
    """Status, content type and body for one of the three paths."""
    if path == "/healthz":
        return 200, "application/json", b'{"status":"ok"}'
    if path == "/readyz":
        checks = await health.readiness()
        ready = all(v == "ok" for v in checks.values())
        body = json.dumps({"status": "ready" if ready else "not_ready", "checks": checks})
        return (200 if ready else 503), "application/json", body.encode()
    if path == "/metrics":
        text, content_type = exposition()
        return 200, content_type, text
    return 404, "application/json", b'{"detail":"not_found"}'


async def serve_health(health: Health, host: str, port: int | None) -> asyncio.Server | None:
    """Serve /healthz, /readyz and /metrics on `port` (None: not at all). A port that is
    taken is logged, not fatal: the service's work matters more than its probes."""
    if port is None:
        return None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing here needs them
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            status, content_type, body = await answer(health, path)
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(handle, host, port)
    except OSError as exc:
        log.warning("health/metrics port %s:%s not served: %s", host, port, exc)
        return None
    log.info("health and metrics on http://%s:%s (/healthz /readyz /metrics)", host, port)
    return server
