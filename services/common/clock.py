"""The one place that reads the wall clock, so the domain never does."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_ns() -> int:
    return time.time_ns()


def utcnow() -> datetime:
    return datetime.now(UTC)


def ns_to_datetime(ns: int) -> datetime:
    """`ns` since the epoch as an aware UTC datetime, truncated to the microsecond.

    Integer arithmetic: exact for any ns (a float of seconds is not, past 2**53 ns), and
    several times cheaper than `datetime.fromtimestamp(…, tz=UTC)`, which the engine
    paid twice per command.
    """
    return _EPOCH + timedelta(microseconds=ns // 1000)


def to_milliseconds(value: datetime) -> datetime:
    """`value` truncated to the millisecond: what a BSON date keeps. Every time the read
    side stores or answers goes through here, so a value computed in memory equals the
    same value read back from MongoDB."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)
