"""`make status`: each service's liveness, readiness and consumer lag, read from its
/readyz and /metrics (services/common/health.py)."""

from __future__ import annotations

import os
import re

import httpx

_LAG = re.compile(r'^runstore_consumer_lag\{[^}]*group="([^"]*)"[^}]*\} (\S+)$', re.M)


def probe_ports() -> dict[str, int]:
    """Where each service serves its probes, from the same RUNSTORE_* variables."""
    return {
        "api": int(os.environ.get("RUNSTORE_API_PORT", "8080")),
        "engine": int(os.environ.get("RUNSTORE_ENGINE_HEALTH_PORT", "9464")),
        "projector": int(os.environ.get("RUNSTORE_PROJECTOR_HEALTH_PORT", "9465")),
        "timers": int(os.environ.get("RUNSTORE_TIMERS_HEALTH_PORT", "9466")),
        "worker": int(os.environ.get("RUNSTORE_WORKER_HEALTH_PORT", "9467")),
    }


def service_line(name: str, port: int, host: str = "127.0.0.1") -> str:
    """`engine  ready  lag 0  (http://…)` or why not."""
    base = f"http://{host}:{port}"
    try:
        ready = httpx.get(f"{base}/readyz", timeout=5)
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
    except httpx.HTTPError as exc:
        return f"{name:10} unreachable on {base} ({type(exc).__name__})"
    body = ready.json()
    state = body.get("status", "?")
    failing = {k: v for k, v in body.get("checks", {}).items() if v != "ok"}
    lag = sum(float(v) for _, v in _LAG.findall(metrics))
    line = f"{name:10} {state:9} lag {lag:,.0f}  ({base})"
    return line + (f"  {failing}" if failing else "")


def print_status() -> None:
    for name, port in probe_ports().items():
        print(service_line(name, port))
