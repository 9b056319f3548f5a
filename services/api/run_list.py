"""`list_runs`: filters, sort and keyset pagination over the `runs` read model.

Pages are cut by keyset, never skip/offset. The sort is `(sort field, _id)` in the asked
direction. `end_time` is null while a run is open; MongoDB orders null below every date,
so under `sort_by=end_time` the open runs come last in `desc` order and first in `asc`
order. The list is walked as ordered *segments* (the dated runs, the open runs), each
served by the same index; a page that ends in one segment continues in the next.

The page token holds the last row's sort value and `_id` plus a fingerprint of the
filters it was made for, and a MAC over both: a token that was altered, signed under
another key, or reused with other filters, is refused with a clear 400 instead of
returning wrong rows. The MAC key comes from `RUNSTORE_PAGE_TOKEN_SECRET`; without it
each process signs with a random key of its own (see `PageTokens.from_secret`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import SecretStr

from schemas.commands import SEARCH_KEY_PATTERN
from services.common.readmodels.projection import (
    search_key_exact_term,
    search_key_folded_prefix,
    search_key_null_term,
    search_key_set_term,
)

log = logging.getLogger(__name__)

Document = dict[str, Any]
SortField = Literal["start_time", "end_time"]
Order = Literal["asc", "desc"]
SearchKeyMatch = Literal["similar", "exact", "set", "null"]

_TOKEN_VERSION = 1
MAX_SEARCH_KEYS = 3
"""Most `search_key` filters in one list_runs call (API.md §4.1)."""
_SEARCH_KEY_NAME = re.compile(SEARCH_KEY_PATTERN)


class BadPageToken(ValueError):
    """The token is not one this API issued for these filters."""


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

    def clauses(self) -> list[Document]:
        """The filter as clauses on the run's `search_terms` array."""
        if self.match == "set":
            return [{"search_terms": search_key_set_term(self.key)}]
        if self.match == "null":
            return [{"search_terms": search_key_null_term(self.key)}]
        assert self.value is not None
        if self.match == "exact":
            return [{"search_terms": search_key_exact_term(self.key, self.value)}]
        # Similar: the key's term pins the index walk; the substring of the case-folded
        # value is checked on the way (`[\s\S]` also crosses newlines in the value).
        folded = _escape_regex(self.value.casefold())
        prefix = _escape_regex(search_key_folded_prefix(self.key))
        return [
            {"search_terms": search_key_set_term(self.key)},
            {"search_terms": {"$regex": f"^{prefix}[\\s\\S]*{folded}"}},
        ]

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


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the previous page ended: its last row's sort value (None = open run) and id."""

    value: datetime | None
    run_id: str


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of the sort order: dated runs, or runs with a null sort field."""

    null: bool


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Every `list_runs` filter, normalised (user `current` already resolved)."""

    workflow_name: str | None = None
    root_execution_id: str | None = None
    search: str | None = None
    statuses: tuple[str, ...] = ()
    deployment_name: str | None = None
    user_id: str | None = None
    include_internal: bool = True
    start_time_after: datetime | None = None
    start_time_before: datetime | None = None
    end_time_after: datetime | None = None
    end_time_before: datetime | None = None
    sort_by: SortField = "start_time"
    order: Order = "desc"
    search_keys: tuple[SearchKeyFilter, ...] = ()
    """ANDed; see SearchKeyFilter."""
    workflow_tags: tuple[str, ...] = ()
    """The run's workflow has every one of these tags."""

    def fingerprint(self) -> str:
        """Identifies the filters and sort a page token belongs to."""
        parts = [
            self.workflow_name,
            self.root_execution_id,
            self.search,
            sorted(set(self.statuses)),
            self.deployment_name,
            self.user_id,
            self.include_internal,
            *(_iso(t) for t in self._times()),
            self.sort_by,
            self.order,
            sorted(k.fingerprint() for k in set(self.search_keys)),
            sorted(set(self.workflow_tags)),
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def _times(self) -> list[datetime | None]:
        return [
            self.start_time_after,
            self.start_time_before,
            self.end_time_after,
            self.end_time_before,
        ]

    def equality(self) -> Document:
        """Fields pinned to one value: candidates to lead the index that serves the query."""
        eq: Document = {}
        if self.workflow_name is not None:
            eq["workflow_name"] = self.workflow_name
        if self.root_execution_id is not None:
            eq["root_execution_id"] = self.root_execution_id
        if self.deployment_name is not None:
            eq["deployment_name"] = self.deployment_name
        if self.user_id is not None:
            eq["user_id"] = self.user_id
        statuses = sorted(set(self.statuses))
        if len(statuses) == 1:
            eq["status"] = statuses[0]
        return eq

    def clauses(self) -> list[Document]:
        """The filter as a list of clauses to AND together."""
        out: list[Document] = [{k: v} for k, v in self.equality().items()]
        statuses = sorted(set(self.statuses))
        if len(statuses) > 1:
            out.append({"status": {"$in": statuses}})
        for search_key in sorted(set(self.search_keys)):
            out += [c for c in search_key.clauses() if c not in out]
        for tag in sorted(set(self.workflow_tags)):
            out.append({"workflow_tags": tag})
        if not self.include_internal:
            out.append({"internal": {"$ne": True}})
        if self.search:
            pattern = _escape_regex(self.search)
            out.append(
                {
                    "$or": [
                        {f: {"$regex": pattern, "$options": "i"}}
                        for f in ("workflow_name", "display_name", "execution_id")
                    ]
                }
            )
        # Range operators never match null, so end_time bounds leave open runs out.
        for name, op, value in (
            ("start_time", "$gte", self.start_time_after),
            ("start_time", "$lte", self.start_time_before),
            ("end_time", "$gte", self.end_time_after),
            ("end_time", "$lte", self.end_time_before),
        ):
            if value is not None:
                out.append({name: {op: value}})
        return out

    def query(self) -> Document:
        """The filter as one MongoDB query (no paging)."""
        return _and(self.clauses())

    def sort(self) -> list[tuple[str, int]]:
        direction = -1 if self.order == "desc" else 1
        return [(self.sort_by, direction), ("_id", direction)]

    def segments(self) -> list[Segment]:
        """The stretches of the sort order, in the order pages walk them."""
        if self.sort_by == "start_time":
            return [Segment(null=False)]  # every run has a start time
        if self.end_time_after is not None or self.end_time_before is not None:
            return [Segment(null=False)]  # open runs are filtered out
        dated, open_runs = Segment(null=False), Segment(null=True)
        return [dated, open_runs] if self.order == "desc" else [open_runs, dated]

    def page_queries(self, after: Cursor | None) -> list[Document]:
        """The queries that, run in turn with `sort()`, list the rows after `after`."""
        segments = self.segments()
        if after is not None:
            start = Segment(null=after.value is None)
            if start not in segments:
                raise BadPageToken("next_page_token does not fit these filters")
            segments = segments[segments.index(start) :]
        queries: list[Document] = []
        for segment in segments:
            clauses = self.clauses()
            clauses += self._segment_clauses(segment, after if segment == segments[0] else None)
            queries.append(_and(clauses))
        return queries

    def _segment_clauses(self, segment: Segment, after: Cursor | None) -> list[Document]:
        f = self.sort_by
        less = "$lt" if self.order == "desc" else "$gt"
        if segment.null:
            out: list[Document] = [{f: None}]
            if after is not None:
                out.append({"_id": {less: after.run_id}})
            return out
        if after is None:
            return [] if f == "start_time" else [{f: {"$ne": None}}]
        # (f, _id) strictly after (v, id): f beyond v, or f == v and _id beyond id. The
        # outer range bounds the index walk; the $or only trims rows at f == v.
        assert after.value is not None
        v = after.value
        return [
            {f: {"$lte" if self.order == "desc" else "$gte": v}},
            {"$or": [{f: {less: v}}, {"_id": {less: after.run_id}}]},
        ]


class PageTokens:
    """Makes and checks list_runs page tokens under one MAC key.

    The key is not what keeps lists private (access rules do that; a made-up token can at
    most start a page elsewhere in a list its bearer may read anyway): it makes a token
    that was edited, or issued by an API with another key, fail with a clear 400 instead
    of paging from a position this API never returned. Every API instance behind one
    address must share the key (`RUNSTORE_PAGE_TOKEN_SECRET`) for tokens to survive a
    restart or land on another instance.
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the page token key must not be empty")
        self._key = key

    @classmethod
    def from_secret(cls, secret: SecretStr | None) -> PageTokens:
        """Tokens keyed by `secret`; without one, by this process's random key (logged)."""
        if secret is not None and secret.get_secret_value():
            return cls(hashlib.sha256(secret.get_secret_value().encode()).digest())
        log.warning(
            "RUNSTORE_PAGE_TOKEN_SECRET is unset: list_runs page tokens are signed with a "
            "random key of this process, so they stop working after a restart and on "
            "other API instances (set the same secret on every instance)"
        )
        return PROCESS_TOKENS

    def make(self, flt: RunFilter, last_row: Document) -> str:
        """The token for the page after the one that ended with `last_row`."""
        payload = json.dumps(
            [_TOKEN_VERSION, flt.fingerprint(), _iso(last_row.get(flt.sort_by)), last_row["_id"]],
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{_b64(self.mac(payload))}"

    def read(self, flt: RunFilter, token: str) -> Cursor:
        """The cursor a token holds; BadPageToken if it is not one made for `flt`."""
        body, dot, mac = token.strip().partition(".")
        try:
            payload = _unb64(body)
            ok = bool(dot) and hmac.compare_digest(_unb64(mac), self.mac(payload))
        except (ValueError, binascii.Error):
            ok = False
        if not ok:
            raise BadPageToken(
                "next_page_token is not a token this API issued: it was altered, or signed "
                "under another page-token secret (another API instance, or this one before "
                "a restart without RUNSTORE_PAGE_TOKEN_SECRET); pass the next_page_token of "
                "the previous page unchanged, or start again from the first page"
            )
        try:
            version, fingerprint, value, run_id = json.loads(payload)
            if version != _TOKEN_VERSION or not isinstance(run_id, str) or not run_id:
                raise ValueError("bad fields")
            sort_value = None if value is None else _aware(datetime.fromisoformat(value))
        except (ValueError, TypeError) as exc:
            raise BadPageToken("next_page_token is malformed") from exc
        if fingerprint != flt.fingerprint():
            raise BadPageToken(
                "next_page_token was issued for other filters, sort or order; repeat the "
                "request with the parameters of the first page"
            )
        return Cursor(sort_value, run_id)

    def mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:12]


PROCESS_TOKENS = PageTokens(secrets.token_bytes(32))
"""Signs with a random key made when this process started: used when no secret is set."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("empty or non-ASCII")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _aware(value).isoformat()


def _and(clauses: list[Document]) -> Document:
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _escape_regex(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?{}[]\|()" else c for c in text)
