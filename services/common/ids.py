"""Id generation: random ids for new things, derived ids where a retry must agree."""

from __future__ import annotations

import hashlib
import uuid


def new_id() -> str:
    return str(uuid.uuid4())


def derived_id(*parts: str) -> str:
    """A stable UUID-shaped id for `parts`: the same inputs always give the same id.

    A hash formatted directly (no uuid.UUID object): the engine derives ids per command,
    and this is several times cheaper than uuid.uuid5.
    """
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
