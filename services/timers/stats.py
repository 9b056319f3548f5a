"""What operators see of the timers: pending count, next fire time, lateness.

Plain attributes, so a metrics exporter can read them; `summary()` is the log line and the
stats document that `runstore timers status` prints."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from services.common.metrics import TIMER_LATENESS


@dataclass
class TimerStats:
    pending: int = 0
    next_fire_ns: int | None = None
    fired_total: int = 0
    """Timers fired (commands sent) since the process started."""
    dropped_total: int = 0
    """Timers stopped or dropped with their closed run before firing."""
    schedules_owned: int = 0
    schedule_starts_total: int = 0
    last_lateness_s: float = 0.0
    lateness_window: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    """Lateness (seconds past fire_at) of the last firings, for the percentiles."""

    def record_firing(self, lateness_s: float) -> None:
        self.fired_total += 1
        self.last_lateness_s = lateness_s
        self.lateness_window.append(lateness_s)
        TIMER_LATENESS.observe(lateness_s)

    def lateness_quantile(self, q: float) -> float:
        if not self.lateness_window:
            return 0.0
        ordered = sorted(self.lateness_window)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self, now_ns: int) -> dict[str, Any]:
        next_in = None if self.next_fire_ns is None else (self.next_fire_ns - now_ns) / 1e9
        return {
            "pending": self.pending,
            "next_fire_in_s": None if next_in is None else round(next_in, 3),
            "fired_total": self.fired_total,
            "dropped_total": self.dropped_total,
            "lateness_p50_s": round(self.lateness_quantile(0.5), 4),
            "lateness_p99_s": round(self.lateness_quantile(0.99), 4),
            "lateness_max_s": round(max(self.lateness_window, default=0.0), 4),
            "schedules_owned": self.schedules_owned,
            "schedule_starts_total": self.schedule_starts_total,
        }
