"""Id generation: random ids for new things, derived ids where a retry must agree."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("6f0f6a3e-5b2f-4d8e-9a55-2d0f2b7c9e10")


def new_id() -> str:
    return str(uuid.uuid4())


def derived_id(*parts: str) -> str:
    """A stable id for `parts`: the same inputs always give the same id."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))
