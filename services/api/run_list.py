"""`list_runs`: filters, sort and keyset pagination over the `runs` read model.

Pages are cut by keyset, never skip/offset: the token holds the last row's sort value
and `_id`, plus a fingerprint of the filters it was made for, so a token reused with
other filters (or forged) is refused with a clear 400 instead of returning wrong rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Document = dict[str, Any]
SortField = Literal["start_time", "end_time"]
Order = Literal["asc", "desc"]


class BadPageToken(ValueError):
    """The token is not one this API issued for these filters."""


@dataclass(frozen=True, slots=True)
class RunFilter:
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
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        parts = [
            self.workflow_name,
            self.root_execution_id,
            self.search,
            sorted(self.statuses),
            self.deployment_name,
            self.user_id,
            self.include_internal,
            *(_iso(t) for t in self._times()),
            self.sort_by,
            self.order,
        ]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]

    def _times(self) -> list[datetime | None]:
        return [
            self.start_time_after,
            self.start_time_before,
            self.end_time_after,
            self.end_time_before,
        ]

    def equality(self) -> Document:
        """Fields pinned to one value: the leading keys of the index that serves the query."""
        eq: Document = {}
        if self.workflow_name is not None:
            eq["workflow_name"] = self.workflow_name
        if self.root_execution_id is not None:
            eq["root_execution_id"] = self.root_execution_id
        if self.deployment_name is not None:
            eq["deployment_name"] = self.deployment_name
        if self.user_id is not None:
            eq["user_id"] = self.user_id
        if len(self.statuses) == 1:
            eq["status"] = self.statuses[0]
        return eq

    def query(self) -> Document:
        clauses: list[Document] = [self.equality()] if self.equality() else []
        if len(self.statuses) > 1:
            clauses.append({"status": {"$in": list(self.statuses)}})
        if not self.include_internal:
            clauses.append({"internal": {"$ne": True}})
        if self.search:
            pattern = _escape_regex(self.search)
            clauses.append(
                {
                    "$or": [
                        {f: {"$regex": pattern, "$options": "i"}}
                        for f in ("workflow_name", "display_name", "execution_id")
                    ]
                }
            )
        for name, op, value in (
            ("start_time", "$gte", self.start_time_after),
            ("start_time", "$lte", self.start_time_before),
            ("end_time", "$gte", self.end_time_after),
            ("end_time", "$lte", self.end_time_before),
        ):
            if value is not None:
                clauses.append({name: {op: value}})
        if not clauses:
            return {}
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def sort(self) -> list[tuple[str, int]]:
        direction = -1 if self.order == "desc" else 1
        return [(self.sort_by, direction), ("_id", direction)]


def after_token(flt: RunFilter, token: str) -> Document:
    """The clause that selects rows strictly after the token's row in sort order."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        fingerprint, value, last_id = raw["f"], raw["v"], raw["i"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadPageToken("next_page_token is malformed") from exc
    if fingerprint != flt.fingerprint():
        raise BadPageToken(
            "next_page_token was issued for other filters or sort; "
            "repeat the request with the same parameters"
        )
    if not isinstance(last_id, str):
        raise BadPageToken("next_page_token is malformed")
    f = flt.sort_by
    try:
        sort_value = datetime.fromisoformat(value) if value is not None else None
    except (TypeError, ValueError) as exc:
        raise BadPageToken("next_page_token is malformed") from exc
    # Mongo orders null below every date: last in desc order, first in asc order.
    if flt.order == "desc":
        if sort_value is None:
            return {f: None, "_id": {"$lt": last_id}}
        return {
            "$or": [
                {f: {"$lt": sort_value}},
                {f: sort_value, "_id": {"$lt": last_id}},
                {f: None},
            ]
        }
    if sort_value is None:
        return {"$or": [{f: None, "_id": {"$gt": last_id}}, {f: {"$ne": None}}]}
    return {"$or": [{f: {"$gt": sort_value}}, {f: sort_value, "_id": {"$gt": last_id}}]}


def make_token(flt: RunFilter, last_row: Document) -> str:
    value = last_row.get(flt.sort_by)
    raw = {"f": flt.fingerprint(), "v": _iso(value), "i": last_row["_id"]}
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def _escape_regex(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?{}[]\|()" else c for c in text)
