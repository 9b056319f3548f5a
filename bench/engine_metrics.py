"""The engine's Prometheus metrics as the benches read them: scraped from its probe port,
differenced over a window, and its batch stages (`runstore_engine_batch_stage_seconds`)
as a table."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter

_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN|\+Inf)$")


def scrape(port: int) -> dict[tuple[str, str], float]:
    """The engine's metrics: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def delta(
    after: dict[tuple[str, str], float], before: dict[tuple[str, str], float]
) -> Counter[tuple[str, str]]:
    return Counter({k: v - before.get(k, 0.0) for k, v in after.items()})


def stage_table(d: Counter[tuple[str, str]]) -> list[str]:
    """Mean and bucket p50 of each engine stage over the window."""
    rows = []
    order = ("fetch", "decide", "wait", "store", "complete", "publish")
    for stage in order:
        name = "runstore_engine_batch_stage_seconds"
        count = d[(f"{name}_count", f'stage="{stage}"')]
        total = d[(f"{name}_sum", f'stage="{stage}"')]
        if not count:
            continue
        buckets = sorted(
            (float("inf") if le == "+Inf" else float(le), v)
            for (n, labels), v in d.items()
            if n == f"{name}_bucket" and f'stage="{stage}"' in labels
            for le in re.findall(r'le="([^"]+)"', labels)
        )
        p50 = next((le for le, v in buckets if v >= count / 2), float("nan"))
        rows.append(
            f"  {stage:9} mean {1000 * total / count:6.2f} ms   p50 <= {1000 * p50:6.1f} ms"
            f"   ({count:.0f} batches)"
        )
    return rows
