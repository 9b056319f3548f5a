"""Every query shape `list_runs` can build is served by a declared index.

The local server (FerretDB) never uses secondary indexes, so speed cannot prove this; the
test reads the MongoDB queries RunFilter really builds (every combination of filters,
sort field, order and page position) and checks that one declared index has: equality
fields of the query first (including its most selective one), then the sort field, then
`_id`, walked in the query's sort direction or exactly reversed.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.readmodels import run_query
from services.common.readmodels.indexes import SELECTIVITY, Index, declared_indexes
from services.common.readmodels.run_filter import Cursor, RunFilter
from services.common.readmodels.search_keys import parse_search_keys
from services.common.readmodels.store import RUNS

T = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
EQUALITY = ("workflow_name", "root_execution_id", "deployment_name", "user_id")
# A second equality field that has a compound index with the first.
COMPOUND_WITH = {"workflow_name": "status", "user_id": "status", "deployment_name": "status"}


# search_key forms: none, a similar value (a term plus a regex), and exact + set + null.
SEARCH_KEYS: list[tuple[str, ...]] = [(), ("customer:acme",), ("customer==:x", "region", "a==")]
TAGS: list[tuple[str, ...]] = [(), ("nightly",), ("nightly", "billing")]


def all_filters() -> list[RunFilter]:
    out = []
    for n in range(len(EQUALITY) + 1):
        for fields in itertools.combinations(EQUALITY, n):
            for keys, tags, statuses, sort_by, order, internal, search, ranges in itertools.product(
                SEARCH_KEYS,
                TAGS,
                [(), ("FAILED",), ("FAILED", "CANCELED")],
                ["start_time", "end_time"],
                ["asc", "desc"],
                [True, False],
                [None, "Nightly"],
                [
                    (),
                    ("start_time_after",),
                    ("end_time_before",),
                    ("start_time_before", "end_time_after"),
                ],
            ):
                out.append(
                    RunFilter(
                        **{f: f"v-{f}" for f in fields},
                        **dict.fromkeys(ranges, T),
                        statuses=statuses,
                        sort_by=sort_by,  # type: ignore[arg-type]
                        order=order,  # type: ignore[arg-type]
                        include_internal=internal,
                        search=search,
                        search_keys=parse_search_keys(list(keys)),
                        workflow_tags=tags,
                    )
                )
    return out


def cursors(flt: RunFilter) -> list[Cursor | None]:
    """No cursor, and a cursor in every segment the filter's order walks."""
    return [None] + [Cursor(None if s.null else T, "run-x") for s in flt.segments()]


def clauses_of(query: dict[str, Any]) -> list[dict[str, Any]]:
    return list(query["$and"]) if "$and" in query else ([query] if query else [])


def shape(query: dict[str, Any], sort_field: str) -> set[str]:
    """The equality-like fields of `query` other than the sort field; raises on a clause
    this analysis does not know (so a new kind of clause must be thought about here)."""
    eq: set[str] = set()
    for clause in clauses_of(query):
        assert len(clause) == 1, clause
        ((field, cond),) = clause.items()
        if field == "$or":
            continue  # search, or the keyset trim at one sort value: filtered on the walk
        if field == sort_field or field == "_id":
            continue  # bounds on the index's sort key and tie-break
        if isinstance(cond, str):
            eq.add(field)  # on an array field (search_terms, workflow_tags): one element
        elif isinstance(cond, dict) and set(cond) == {"$regex"} and field == "search_terms":
            continue  # a similar search_key's substring: filtered on the walk
        elif isinstance(cond, dict) and set(cond) == {"$in"}:
            eq.add(field)  # several point ranges, merged in sort order
        elif isinstance(cond, dict) and set(cond) <= {"$gte", "$lte", "$ne"}:
            continue  # range or exclusion on another field: filtered on the walk
        else:
            raise AssertionError(f"unknown clause {clause!r} in {query!r}")
    return eq


def serving_indexes(query: dict[str, Any], sort: list[tuple[str, int]]) -> list[Index]:
    (sort_field, direction), (tie, tie_direction) = sort
    assert tie == "_id" and tie_direction == direction
    eq = shape(query, sort_field)
    found = []
    for index in RUN_INDEXES:
        *prefix, (f, d), (last, d2) = index.keys
        if f != sort_field or last != "_id" or d != d2:
            continue
        if {p for p, _ in prefix} <= eq:
            found.append(index)
    return found


def wanted_prefix(eq: set[str]) -> set[str]:
    """The equality fields an index must lead with: the most selective one, plus status
    where a compound index with status exists."""
    if not eq:
        return set()
    top = next(f for f in SELECTIVITY if f in eq)
    second = COMPOUND_WITH.get(top)
    return {top, second} if second in eq else {top}


FILTERS = all_filters()
RUN_INDEXES = declared_indexes()[RUNS]


def test_the_enumeration_covers_every_filter_combination() -> None:
    assert len(FILTERS) == 16 * 3 * 3 * 3 * 2 * 2 * 2 * 2 * 4


@pytest.mark.parametrize("sort_by", ["start_time", "end_time"])
def test_every_list_query_shape_is_served_by_a_declared_index(sort_by: str) -> None:
    checked = 0
    for flt in (f for f in FILTERS if f.sort_by == sort_by):
        for cursor in cursors(flt):
            for query in run_query.page_queries(flt, cursor):
                eq = shape(query, flt.sort_by)
                want = wanted_prefix(eq)
                served = [
                    i
                    for i in serving_indexes(query, run_query.sort(flt))
                    if want <= {k for k, _ in i.keys[:-2]}
                ]
                assert served, (
                    f"no index leads with {sorted(want)} for {query} {run_query.sort(flt)}"
                )
                checked += 1
    assert checked > 27000


def test_sort_is_the_sort_field_then_id_in_one_direction() -> None:
    for flt in FILTERS:
        (f, d), (tie, d2) = run_query.sort(flt)
        assert f == flt.sort_by and tie == "_id" and d == d2 == (-1 if flt.order == "desc" else 1)


def test_index_names_are_unique_and_within_mongodb_limits() -> None:
    for indexes in declared_indexes().values():
        names = [i.name for i in indexes]
        assert len(names) == len(set(names))
        assert len({i.keys for i in indexes}) == len(indexes)
        assert len(indexes) < 64  # MongoDB's limit per collection, _id_ included


def test_every_declared_runs_index_ends_with_sort_field_then_id() -> None:
    for index in declared_indexes()[RUNS]:
        *prefix, (f, d), (last, d2) = index.keys
        assert f in ("start_time", "end_time") and last == "_id" and d == d2
        assert all(p in SELECTIVITY for p, _ in prefix)
