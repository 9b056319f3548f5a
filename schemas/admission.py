"""The admission rule: what a command may carry so that every store and consumer
downstream can take it. One rule, applied by the engine before a command is decided (a
refused record is dead-lettered with the reason) and by the API before it publishes one
(4xx with the same reason).

Why each limit (measured against FerretDB 1.24 and PyMongo; MongoDB refuses the same or
less):

- object keys: no NUL (PyMongo cannot encode it: `InvalidDocument`), none starting with
  `$` and none containing `.` (FerretDB refuses both; MongoDB accepts them since 5.0 but
  its query language cannot address them). Results and failure details are stored as BSON
  in the run documents, so one such key would stop the projector.
- integers within 64 bits (BSON has no larger integer; PyMongo raises `OverflowError`);
  numbers finite (FerretDB refuses infinities and drops the connection on NaN; JSON has
  neither).
- strings valid Unicode (a lone UTF-16 surrogate cannot be encoded as UTF-8).
- nesting at most `MAX_DEPTH` levels (a run document nests the value 2-3 levels down, and
  MongoDB stores at most 100; JSON parsers downstream have recursion limits too).
- the command, as the engine encodes it again, at most `MAX_COMMAND_BYTES`: every record
  the engine derives from one command (event, task, successor command) carries at most
  that command's values plus an envelope, so it stays under `TOPIC_RECORD_BYTES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, time, timedelta
from enum import Enum
from typing import Any

from pydantic import BaseModel

TOPIC_RECORD_BYTES = 1_000_000
"""The largest record every Runstore topic must accept (key, value and headers): under
Kafka's default `max.message.bytes` (1 MiB + 12 B) with room for the batch framing."""
ENVELOPE_MARGIN_BYTES = 64 * 1024
"""What a derived record may add to its command's values (ids, names, attributes)."""
MAX_COMMAND_BYTES = TOPIC_RECORD_BYTES - ENVELOPE_MARGIN_BYTES
"""The largest command, JSON-encoded as the engine encodes it."""
MAX_DEPTH = 64
"""Nesting levels of a JSON value in a command (an object or array is one level)."""
_MIN_INT = -(1 << 63)
_MAX_INT = (1 << 63) - 1
# pydantic re-encodes a parsed number in at most ~4.5x its bytes (`1E15` ->
# `1000000000000000.0`); a record under this many bytes cannot grow past the limit, so it
# is not encoded again just to be measured.
_SURELY_SMALL_BYTES = MAX_COMMAND_BYTES // 5

TOO_LARGE = "too_large"
PAYLOAD_REFUSED = "payload_refused"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a command is not admitted: a code (`too_large` or `payload_refused`), where in
    the command (a path of keys and indexes) and what is wrong."""

    code: str
    loc: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.loc) or "<command>"
        return f"{where}: {self.message}"


def refusal(command: BaseModel, encoded_size: int | None = None) -> Refusal | None:
    """Why `command` must not be applied, or None when it may.

    `encoded_size` is the size of the record it was parsed from, when known: small
    records are not encoded again to be measured.
    """
    found = _refused(command)
    if found is not None:
        return found
    if encoded_size is not None and encoded_size <= _SURELY_SMALL_BYTES:
        return None
    size = len(command.model_dump_json(exclude_none=False))
    if size > MAX_COMMAND_BYTES:
        return Refusal(
            TOO_LARGE, (), f"the command is {size} bytes encoded, over {MAX_COMMAND_BYTES}"
        )
    return None


def encoded_refusal(command: BaseModel, encoded: bytes) -> Refusal | None:
    """`refusal` for a command about to be published as `encoded` (its exact bytes)."""
    found = _refused(command)
    if found is None and len(encoded) > MAX_COMMAND_BYTES:
        found = Refusal(
            TOO_LARGE, (), f"the command is {len(encoded)} bytes encoded, over {MAX_COMMAND_BYTES}"
        )
    return found


def _refused(command: BaseModel) -> Refusal | None:
    found = _check(command, 0)
    if found is None:
        return None
    message, reversed_loc = found
    return Refusal(PAYLOAD_REFUSED, tuple(reversed(reversed_loc)), message)


# What `_check` does with a value, by its exact type. Every command is walked whole, so
# the walk allocates nothing unless it finds something: the location is collected on
# the way back up, innermost first.
_STR, _INT, _FLOAT, _LEAF, _MODEL, _NESTED = range(6)
_KINDS: dict[type, int] = {str: _STR, int: _INT, float: _FLOAT, bool: _LEAF, type(None): _LEAF}
_Found = tuple[str, list[str | int]]
"""What is wrong, and where (innermost key or index first)."""


def _kind(kind: type) -> int:
    found = _KINDS.get(kind)
    if found is None:
        # Anything else: a contract model, a typed leaf of a contract (an enum, a
        # datetime: its values are the contract's, and they are never inside a JSON value,
        # so never at a depth that counts), or a JSON container that counts as a level of
        # nesting. Leaves are skipped without a call.
        if issubclass(kind, BaseModel):
            found = _MODEL
        elif issubclass(kind, Enum | date | time | timedelta):
            found = _LEAF
        else:
            found = _NESTED
        _KINDS[kind] = found
    return found


def _check(value: Any, depth: int) -> _Found | None:
    found: _Found | None
    kind = _KINDS.get(type(value))
    if kind is None:
        kind = _kind(type(value))
    if kind == _STR:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone UTF-16 surrogate", []
        return None
    if kind == _INT:
        if not _MIN_INT <= value <= _MAX_INT:
            return "an integer outside 64 bits", []
        return None
    if kind == _FLOAT:
        if not math.isfinite(value):
            return "a number that is not finite", []
        return None
    if kind == _LEAF:
        return None
    if kind == _MODEL:
        # A contract model is not a level of the user's value: walk its fields in place.
        for name, field_value in value.__dict__.items():
            # None, bools, enums, datetimes and ASCII strings (most fields) pass without
            # a call.
            field_kind = _KINDS.get(type(field_value))
            if field_kind == _LEAF or (field_kind == _STR and field_value.isascii()):
                continue
            found = _check(field_value, depth)
            if found is not None:
                found[1].append(name)
                return found
        return None
    if depth >= MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels", []
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                continue
            bad = _bad_key(key)
            if bad is not None:
                return bad, [key]
            found = None if key.isascii() else _check(key, depth)
            if found is None:
                # As for a model's fields, and integers within 64 bits: no call.
                item_kind = _KINDS.get(type(item))
                if not (
                    item_kind == _LEAF
                    or (item_kind == _STR and item.isascii())
                    or (item_kind == _INT and _MIN_INT <= item <= _MAX_INT)
                ):
                    found = _check(item, depth + 1)
            if found is not None:
                found[1].append(key)
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            item_kind = _KINDS.get(type(item))
            if (
                item_kind == _LEAF
                or (item_kind == _STR and item.isascii())
                or (item_kind == _INT and _MIN_INT <= item <= _MAX_INT)
            ):
                continue
            found = _check(item, depth + 1)
            if found is not None:
                found[1].append(i)
                return found
        return None
    return None  # other typed values: fields the contracts already constrain


def _bad_key(key: str) -> str | None:
    if "\x00" in key:
        return "an object key holds a NUL character"
    if key.startswith("$"):
        return "an object key starts with '$'"
    if "." in key:
        return "an object key holds a '.'"
    return None
