"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import Stack, StackWith


@pytest.fixture
def engine(stack_with: StackWith) -> Iterator[Stack]:
    """The engine alone, as a real process on the test's private topics and database."""
    with stack_with(services=("engine",)) as stack:
        yield stack
