"""What `list_runs` asks for: its filters, its sort, and where a page starts.

The sort is `(sort field, _id)` in the asked direction. `end_time` is null while a run is
open and nulls order below every date (as MongoDB orders them), so under
`sort_by=end_time` the open runs come last in `desc` order and first in `asc` order. The
list is walked as ordered *segments* (the dated runs, the open runs); a page that ends in
one segment continues in the next. `run_query.py` compiles this into MongoDB queries;
`memory_store.py` evaluates it directly, and the contract suite holds the two equal.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from services.common.readmodels.search_keys import SearchKeyFilter

Document = dict[str, Any]
SortField = Literal["start_time", "end_time"]
Order = Literal["asc", "desc"]


class BadPageToken(ValueError):
    """The token (or the cursor it holds) is not one this API issued for these filters."""


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
            *(iso(t) for t in self.time_bounds()),
            self.sort_by,
            self.order,
            sorted(k.fingerprint() for k in set(self.search_keys)),
            sorted(set(self.workflow_tags)),
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def time_bounds(self) -> list[datetime | None]:
        """start after, start before, end after, end before (inclusive; None: unbounded)."""
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

    def segments(self) -> list[Segment]:
        """The stretches of the sort order, in the order pages walk them."""
        if self.sort_by == "start_time":
            return [Segment(null=False)]  # every run has a start time
        if self.end_time_after is not None or self.end_time_before is not None:
            return [Segment(null=False)]  # open runs are filtered out
        dated, open_runs = Segment(null=False), Segment(null=True)
        return [dated, open_runs] if self.order == "desc" else [open_runs, dated]

    def segments_from(self, after: Cursor | None) -> list[Segment]:
        """The segments a page starting after `after` walks; BadPageToken if the cursor
        lies in none of them (a null sort value under a sort that has none)."""
        segments = self.segments()
        if after is None:
            return segments
        start = Segment(null=after.value is None)
        if start not in segments:
            raise BadPageToken("next_page_token does not fit these filters")
        return segments[segments.index(start) :]


def aware(value: datetime) -> datetime:
    """Naive datetimes are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    return None if value is None else aware(value).isoformat()
