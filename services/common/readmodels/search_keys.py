"""Search keys: how a run's keys are stored for matching, and the `search_key` filter
grammar of `list_runs` (API.md §4.1, docs/read-models.md).

A run's search keys are matched through one array of terms (`search_terms`), so that one
multikey index (`search_terms`, sort field, `_id`) serves every filter form. Keys hold
only letters, digits, '_' and '-' (schemas.commands.SEARCH_KEY_PATTERN), so the ':' after
the kind and the '=' after the key are unambiguous. For each key `k`: `set:k`; then
`null:k` if its value is null, else `eq:k=<value>` and `fold:k=<value case-folded>`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from schemas.commands import SEARCH_KEY_PATTERN

SearchKeyMatch = Literal["similar", "exact", "set", "null"]

MAX_SEARCH_KEYS = 3
"""Most `search_key` filters in one list_runs call (API.md §4.1)."""
_SEARCH_KEY_NAME = re.compile(SEARCH_KEY_PATTERN)


def search_key_set_term(key: str) -> str:
    """Matches runs where `key` is set (to a value or to null): filter `key`."""
    return f"set:{key}"


def search_key_null_term(key: str) -> str:
    """Matches runs where `key` is set to null: filter `key==`."""
    return f"null:{key}"


def search_key_exact_term(key: str, value: str) -> str:
    """Matches runs where `key` is exactly `value`: filter `key==:value`."""
    return f"eq:{key}={value}"


def search_key_folded_prefix(key: str) -> str:
    """Prefix of the term holding `key`'s value case-folded: filter `key:value` matches
    runs having a term that starts with this and contains the folded value after it."""
    return f"fold:{key}="


def search_terms(search_keys: Mapping[str, str | None] | None) -> list[str]:
    """The terms a run with these search keys is found by."""
    terms: list[str] = []
    for key, value in sorted((search_keys or {}).items()):
        terms.append(search_key_set_term(key))
        if value is None:
            terms.append(search_key_null_term(key))
        else:
            terms.append(search_key_exact_term(key, value))
            terms.append(search_key_folded_prefix(key) + value.casefold())
    return terms


class BadSearchKey(ValueError):
    """A `search_key` filter that is not one of its four forms."""


@dataclass(frozen=True, slots=True, order=True)
class SearchKeyFilter:
    """One `search_key` filter: `key:value` (similar), `key==:value` (exact), `key`
    (set) or `key==` (null)."""

    key: str
    match: SearchKeyMatch
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> SearchKeyFilter:
        """Raises BadSearchKey with a message naming the accepted forms."""
        head, colon, value = text.partition(":")
        exact = head.endswith("==")
        key = head[:-2] if exact else head
        if not _SEARCH_KEY_NAME.fullmatch(key) or len(key) > 100:
            raise BadSearchKey(
                f"search_key {text!r}: expected key:value (similar value), key==:value "
                "(exact value), key (key is set) or key== (value is null), with a key of "
                "letters, digits, '_' or '-'"
            )
        if colon and exact:
            return cls(key, "exact", value)
        if colon:
            if not value:
                raise BadSearchKey(
                    f"search_key {text!r}: a similar-value filter needs a value; use "
                    f"{key!r} for runs where the key is set"
                )
            return cls(key, "similar", value)
        return cls(key, "null" if exact else "set")

    def matches(self, terms: Sequence[str]) -> bool:
        """Whether a run with these `search_terms` passes this filter."""
        if self.match == "set":
            return search_key_set_term(self.key) in terms
        if self.match == "null":
            return search_key_null_term(self.key) in terms
        assert self.value is not None
        if self.match == "exact":
            return search_key_exact_term(self.key, self.value) in terms
        prefix, folded = search_key_folded_prefix(self.key), self.value.casefold()
        return any(t.startswith(prefix) and folded in t[len(prefix) :] for t in terms)

    def index_term(self) -> str:
        """A term every run this filter accepts has (the exact term; for a similar value,
        the key's `set:` term, whose runs are then tested with `matches`)."""
        if self.match == "null":
            return search_key_null_term(self.key)
        if self.match == "exact":
            assert self.value is not None
            return search_key_exact_term(self.key, self.value)
        return search_key_set_term(self.key)

    def fingerprint(self) -> list[str | None]:
        return [self.key, self.match, self.value]


def parse_search_keys(values: list[str]) -> tuple[SearchKeyFilter, ...]:
    """The `search_key` query values as filters; BadSearchKey if one is malformed or
    there are more than MAX_SEARCH_KEYS."""
    if len(values) > MAX_SEARCH_KEYS:
        raise BadSearchKey(
            f"at most {MAX_SEARCH_KEYS} search_key filters are allowed, got {len(values)}"
        )
    return tuple(sorted({SearchKeyFilter.parse(v) for v in values}))
