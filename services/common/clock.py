"""The one place that reads the wall clock, so the domain never does."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ns() -> int:
    return time.time_ns()


def utcnow() -> datetime:
    return datetime.now(UTC)


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1_000_000_000, tz=UTC)
