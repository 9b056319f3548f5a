"""Bearer API keys: `RUNSTORE_API_KEYS="key1=alice,key2=bob"`.

Unset means dev mode: any non-empty key is accepted as the user `dev` (logged loudly at
start). A missing or unknown key is 401 in both modes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEV_USER = "dev"


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: str


class ApiKeys:
    def __init__(self, spec: str | None) -> None:
        self._keys: dict[str, str] | None = None
        if spec is not None and spec.strip():
            self._keys = {}
            for pair in spec.split(","):
                key, sep, user = pair.strip().partition("=")
                if not sep or not key or not user:
                    raise ValueError(f"RUNSTORE_API_KEYS entry {pair!r} is not key=user_id")
                self._keys[key] = user

    @property
    def dev_mode(self) -> bool:
        return self._keys is None

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller an Authorization header names, or None if it names nobody."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        if self._keys is None:
            return Caller(DEV_USER)
        user = self._keys.get(key.strip())
        return Caller(user) if user else None
