"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack


@pytest.fixture
def engine(isolated: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """The engine alone, as a real process on the test's private topics and database."""
    s = Stack(env=isolated, log_dir=tmp_path)
    s.start("engine")
    try:
        yield s
    finally:
        s.stop_all()
