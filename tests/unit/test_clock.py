"""Nanosecond timestamps to datetimes: exact, UTC, truncated to the microsecond."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.common.clock import ns_to_datetime


def test_known_instants() -> None:
    assert ns_to_datetime(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert ns_to_datetime(1_999) == datetime(1970, 1, 1, microsecond=1, tzinfo=UTC)
    assert ns_to_datetime(1_795_446_621_603_699_245) == datetime(
        2026, 11, 23, 15, 10, 21, 603699, tzinfo=UTC
    )


@given(st.integers(min_value=0, max_value=4_000_000_000 * 10**9))
def test_truncates_to_the_microsecond_below(ns: int) -> None:
    got = ns_to_datetime(ns)
    assert got.tzinfo is UTC
    micros = (got - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert micros * 1000 <= ns < (micros + 1) * 1000
