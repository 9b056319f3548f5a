"""Id generation: time-ordered ids for new things, derived ids where a retry must agree.

New ids are version 7 UUIDs (RFC 9562): 48 bits of Unix time in milliseconds, then
random bits. They become index keys (execution ids in the commits' `_id`s and the
executions' pointers, command ids in the commits' unique `command_id` index, run ids
derived from them in the run locators and run rows), and a B-tree takes keys that grow
with time at its right edge: a batch of starts touches a few leaf pages instead of one
random page per key (FerretDB on SQLite writes each changed page to its WAL at every
COMMIT; docs/local-store.md, "Eleventh session"). The time prefix is not a promise of
order to clients: ids from different processes, derived ids and ids a client chose are
not ordered by it.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time

# A canonical (lower-case) version 7 UUID: the ids `new_id` makes.
_V7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


_BLOCK_IDS = 256
"""Ids' random bytes drawn from the OS at a time (10 each): one `getrandom` system call per
256 ids instead of one per id (the API made two per execute)."""
_HEX_PER_ID = 20
_BLOCK_HEX = _BLOCK_IDS * _HEX_PER_ID


class _Pool(threading.local):
    """A thread's random hex digits not handed out yet: per thread, so two threads never
    take the same digits (no lock); emptied in a forked child (`_forked`), which must not
    hand out what its parent will."""

    def __init__(self) -> None:
        self.digits = ""
        self.at = _BLOCK_HEX


_pool = _Pool()


def _forked() -> None:
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_forked)


def _random_hex() -> str:
    """20 random hex digits (80 bits from `os.urandom`), from the thread's pool."""
    pool = _pool
    at = pool.at
    if at >= _BLOCK_HEX:  # (a new pool starts here too: its digits are "")
        pool.digits = os.urandom(_BLOCK_HEX // 2).hex()
        at = 0
    pool.at = at + _HEX_PER_ID
    return pool.digits[at : at + _HEX_PER_ID]


def new_id() -> str:
    """A version 7 UUID as text, as `str(uuid.UUID(...))` prints it: the current time in
    milliseconds (48 bits), then 74 random bits. Formatted straight from the clock and the
    random bytes (the API makes two per execute; no uuid.UUID object)."""
    t = f"{time.time_ns() // 1_000_000:012x}"
    h = _random_hex()
    # Version 7 in the 13th hex digit; the variant (binary 10xx) in the 17th.
    return f"{t[:8]}-{t[8:]}-7{h[1:4]}-{'89ab'[int(h[4], 16) & 3]}{h[5:8]}-{h[8:]}"


_DAY_MS = 86_400_000


def time_ordered_near(id_: str, at_ms: int) -> str:
    """`id_` if it is a version 7 id whose time prefix lies within a day of `at_ms`, else
    "": what to pass as `derived_id`'s `time_of`. The shape alone is not enough: about one
    in 64 hash-formatted ids (from idempotency keys, or ids a producer chose) has a 7 and
    a variant digit where a version 7 id has them, and ids derived from such an id must
    stay what they were before ids were time-ordered."""
    if not _V7.fullmatch(id_):
        return ""
    prefix_ms = int(id_[:8] + id_[9:13], 16)
    return id_ if abs(prefix_ms - at_ms) <= _DAY_MS else ""


def derived_id(*parts: str, time_of: str = "") -> str:
    """A stable UUID-shaped id for `parts`: the same inputs always give the same id.

    With `time_of` a version 7 id (one `new_id` made; it should be one of `parts`, and
    checked with `time_ordered_near` where it may be a hash-formatted id), the
    result is a version 7 UUID with `time_of`'s time prefix and the hash's bits after it,
    so ids derived from a new id sort near it. Otherwise (no `time_of`, or one with no
    time prefix: ids a client chose, ids derived from idempotency keys) the hash formatted
    whole, as before: ids derived from such inputs are unchanged, and not time-ordered.

    A hash formatted directly (no uuid.UUID object): the engine derives ids per command,
    and this is several times cheaper than uuid.uuid5.
    """
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()
    if time_of and _V7.fullmatch(time_of):
        return f"{time_of[:13]}-7{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
