"""`RunFilter` compiled into MongoDB queries over `runs` (used by MongoReadModelReader;
`tests/unit/test_indexes.py` checks that a declared index serves every query it builds).

Pages are cut by keyset, never skip/offset: each segment of the sort order (see
run_filter.py) is one query, sorted by `(sort field, _id)`, starting after the cursor.
"""

from __future__ import annotations

from services.common.readmodels.run_filter import Cursor, Document, RunFilter, Segment
from services.common.readmodels.search_keys import (
    SearchKeyFilter,
    search_key_exact_term,
    search_key_folded_prefix,
    search_key_null_term,
    search_key_set_term,
)


def search_key_clauses(sk: SearchKeyFilter) -> list[Document]:
    """One `search_key` filter as clauses on the run's `search_terms` array."""
    if sk.match == "set":
        return [{"search_terms": search_key_set_term(sk.key)}]
    if sk.match == "null":
        return [{"search_terms": search_key_null_term(sk.key)}]
    assert sk.value is not None
    if sk.match == "exact":
        return [{"search_terms": search_key_exact_term(sk.key, sk.value)}]
    # Similar: the key's term pins the index walk; the substring of the case-folded
    # value is checked on the way (`[\s\S]` also crosses newlines in the value).
    folded = escape_regex(sk.value.casefold())
    prefix = escape_regex(search_key_folded_prefix(sk.key))
    return [
        {"search_terms": search_key_set_term(sk.key)},
        {"search_terms": {"$regex": f"^{prefix}[\\s\\S]*{folded}"}},
    ]


def clauses(flt: RunFilter) -> list[Document]:
    """The filter as a list of clauses to AND together."""
    out: list[Document] = [{k: v} for k, v in flt.equality().items()]
    statuses = sorted(set(flt.statuses))
    if len(statuses) > 1:
        out.append({"status": {"$in": statuses}})
    for search_key in sorted(set(flt.search_keys)):
        out += [c for c in search_key_clauses(search_key) if c not in out]
    for tag in sorted(set(flt.workflow_tags)):
        out.append({"workflow_tags": tag})
    if not flt.include_internal:
        out.append({"internal": {"$ne": True}})
    if flt.search:
        pattern = escape_regex(flt.search)
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
        ("start_time", "$gte", flt.start_time_after),
        ("start_time", "$lte", flt.start_time_before),
        ("end_time", "$gte", flt.end_time_after),
        ("end_time", "$lte", flt.end_time_before),
    ):
        if value is not None:
            out.append({name: {op: value}})
    return out


def query(flt: RunFilter) -> Document:
    """The filter as one MongoDB query (no paging)."""
    return _and(clauses(flt))


def sort(flt: RunFilter) -> list[tuple[str, int]]:
    direction = -1 if flt.order == "desc" else 1
    return [(flt.sort_by, direction), ("_id", direction)]


def page_queries(flt: RunFilter, after: Cursor | None) -> list[Document]:
    """The queries that, run in turn with `sort(flt)`, list the rows after `after`."""
    segments = flt.segments_from(after)
    return [
        _and(clauses(flt) + _segment_clauses(flt, s, after if s == segments[0] else None))
        for s in segments
    ]


def _segment_clauses(flt: RunFilter, segment: Segment, after: Cursor | None) -> list[Document]:
    f = flt.sort_by
    less = "$lt" if flt.order == "desc" else "$gt"
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
        {f: {"$lte" if flt.order == "desc" else "$gte": v}},
        {"$or": [{f: {less: v}}, {"_id": {less: after.run_id}}]},
    ]


def _and(parts: list[Document]) -> Document:
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


def escape_regex(text: str) -> str:
    """`text` matched literally inside a regex."""
    return "".join("\\" + c if c in r".^$*+?{}[]\|()" else c for c in text)
