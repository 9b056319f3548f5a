"""Reading a service's `/metrics` (Prometheus text exposition) in tests."""

from __future__ import annotations


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            got = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(got.split(","))) == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0
