"""`list_runs` filters, keyset pages and page tokens, checked without a server: the
MongoDB queries RunFilter builds are evaluated by a small interpreter of the operators it
uses (with MongoDB's rules: null sorts below dates, range operators never match null), and
paging through them is compared with sorting the rows in Python.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from services.api.page_tokens import PageTokens
from services.common.readmodels import run_query
from services.common.readmodels.run_filter import BadPageToken, Cursor, RunFilter
from services.common.readmodels.search_keys import (
    BadSearchKey,
    SearchKeyFilter,
    parse_search_keys,
    search_terms,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TOKENS = PageTokens(b"unit-test-key")
make_token = TOKENS.make
read_token = TOKENS.read

# --- a tiny MongoDB query interpreter ---------------------------------------------------------


def _comparable(a: Any, b: Any) -> bool:
    return a is not None and b is not None and type(a) is type(b)


def _op(op: str, value: Any, arg: Any, cond: dict[str, Any]) -> bool:
    if isinstance(value, list) and op in ("$regex", "$in"):  # an array: any element
        return any(_op(op, v, arg, cond) for v in value)
    if op == "$in":
        return value in arg
    if op == "$ne":
        return bool(value != arg)
    if op == "$regex":
        flags = re.IGNORECASE if "i" in cond.get("$options", "") else 0
        return isinstance(value, str) and re.search(arg, value, flags) is not None
    if op == "$options":
        return True
    if not _comparable(value, arg):  # MongoDB: range operators never cross types
        return False
    return bool(
        {
            "$lt": value < arg,
            "$lte": value <= arg,
            "$gt": value > arg,
            "$gte": value >= arg,
        }[op]
    )


def matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for key, cond in query.items():
        if key == "$and":
            ok = all(matches(doc, q) for q in cond)
        elif key == "$or":
            ok = any(matches(doc, q) for q in cond)
        elif isinstance(cond, dict):
            ok = all(_op(op, doc.get(key), arg, cond) for op, arg in cond.items())
        elif isinstance(doc.get(key), list):  # an array matches a value it holds
            ok = cond in doc[key]
        else:
            ok = doc.get(key) == cond
        if not ok:
            return False
    return True


def sort_key(doc: dict[str, Any], field: str) -> tuple[Any, ...]:
    value = doc.get(field)
    return (0, T0, doc["_id"]) if value is None else (1, value, doc["_id"])


def find(
    rows: list[dict[str, Any]], query: dict[str, Any], sort: list[tuple[str, int]], limit: int
) -> list[dict[str, Any]]:
    (field, direction), _ = sort
    hits = sorted((r for r in rows if matches(r, query)), key=lambda r: sort_key(r, field))
    if direction < 0:
        hits.reverse()
    return hits[:limit]


def page(
    rows: list[dict[str, Any]], flt: RunFilter, size: int, token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """What RunReader.list_runs does, over `rows`."""
    after = read_token(flt, token) if token else None
    out: list[dict[str, Any]] = []
    for query in run_query.page_queries(flt, after):
        out += find(rows, query, run_query.sort(flt), size + 1 - len(out))
        if len(out) > size:
            break
    if len(out) <= size:
        return out, None
    return out[:size], make_token(flt, out[size - 1])


def walk(rows: list[dict[str, Any]], flt: RunFilter, size: int) -> list[list[str]]:
    pages, token = [], None
    while True:
        got, token = page(rows, flt, size, token)
        pages.append([r["_id"] for r in got])
        if token is None:
            return pages
        assert len(got) == size, "a non-final page must be full"


# --- rows -------------------------------------------------------------------------------------


def make_rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        start = T0 + timedelta(milliseconds=rnd.randrange(0, 40))  # many ties
        ended = rnd.random() < 0.6
        keys: dict[str, str | None] = {}
        if rnd.random() < 0.7:
            keys["customer"] = rnd.choice(["ACME Corp", "acme-eu", "Globex", "", "x:y==z"])
        if rnd.random() < 0.4:
            keys["region"] = rnd.choice([None, "eu", "us"])
        tags = sorted(set(rnd.sample(["billing", "nightly", "eu", "beta"], rnd.randrange(0, 4))))
        rows.append(
            {
                "search_keys": keys,
                "search_terms": search_terms(keys),
                "workflow_tags": tags,
                "_id": f"run-{i:03d}",
                "execution_id": f"Exec-{i:03d}",
                "workflow_name": rnd.choice(["order", "invoice", "Nightly-Report"]),
                "display_name": rnd.choice([None, "Big ORDER run", "misc"]),
                "root_execution_id": rnd.choice(["root-1", "root-2", f"Exec-{i:03d}"]),
                "deployment_name": rnd.choice([None, "prod", "dev"]),
                "user_id": rnd.choice(["alice", "bob"]),
                "internal": rnd.random() < 0.2,
                "status": rnd.choice(["COMPLETED", "FAILED", "CANCELED"]) if ended else "RUNNING",
                "start_time": start,
                "end_time": start + timedelta(milliseconds=rnd.randrange(0, 5)) if ended else None,
            }
        )
    return rows


def reference(rows: list[dict[str, Any]], flt: RunFilter) -> list[str]:
    """The whole list, filtered and sorted in plain Python."""

    def keep(r: dict[str, Any]) -> bool:
        if flt.workflow_name and r["workflow_name"] != flt.workflow_name:
            return False
        if flt.root_execution_id and r["root_execution_id"] != flt.root_execution_id:
            return False
        if flt.statuses and r["status"] not in flt.statuses:
            return False
        if flt.user_id and r["user_id"] != flt.user_id:
            return False
        if flt.deployment_name and r["deployment_name"] != flt.deployment_name:
            return False
        if not flt.include_internal and r["internal"]:
            return False
        if flt.search:
            s = flt.search.lower()
            fields = (r["workflow_name"], r["display_name"] or "", r["execution_id"])
            if not any(s in f.lower() for f in fields):
                return False
        for sk in flt.search_keys:
            keys = r["search_keys"]
            if sk.key not in keys:
                return False
            value = keys[sk.key]
            if sk.match == "null" and value is not None:
                return False
            if sk.match == "exact" and value != sk.value:
                return False
            if sk.match == "similar" and (
                value is None or str(sk.value).casefold() not in value.casefold()
            ):
                return False
        if not set(flt.workflow_tags) <= set(r["workflow_tags"]):
            return False
        end = r["end_time"]
        if flt.start_time_after and r["start_time"] < flt.start_time_after:
            return False
        if flt.start_time_before and r["start_time"] > flt.start_time_before:
            return False
        if flt.end_time_after and (end is None or end < flt.end_time_after):
            return False
        return not (flt.end_time_before and (end is None or end > flt.end_time_before))

    kept = sorted(filter(keep, rows), key=lambda r: sort_key(r, flt.sort_by))
    if flt.order == "desc":
        kept.reverse()
    return [r["_id"] for r in kept]


FILTERS = [
    RunFilter(),
    RunFilter(workflow_name="order"),
    RunFilter(root_execution_id="root-1"),
    RunFilter(statuses=("FAILED",)),
    RunFilter(statuses=("FAILED", "RUNNING")),
    RunFilter(user_id="bob", deployment_name="prod"),
    RunFilter(include_internal=False),
    RunFilter(search="order"),
    RunFilter(search="EXEC-01"),
    RunFilter(start_time_after=T0 + timedelta(milliseconds=10)),
    RunFilter(start_time_before=T0 + timedelta(milliseconds=20)),
    RunFilter(end_time_after=T0 + timedelta(milliseconds=5)),
    RunFilter(end_time_before=T0 + timedelta(milliseconds=30)),
    RunFilter(search_keys=parse_search_keys(["customer:acme"])),
    RunFilter(search_keys=parse_search_keys(["customer==:Globex"])),
    RunFilter(search_keys=parse_search_keys(["customer==:"])),
    RunFilter(search_keys=parse_search_keys(["customer:Y==Z"])),
    RunFilter(search_keys=parse_search_keys(["region"])),
    RunFilter(search_keys=parse_search_keys(["region=="])),
    RunFilter(search_keys=parse_search_keys(["region", "customer:ACME", "region==:eu"])),
    RunFilter(workflow_tags=("nightly",)),
    RunFilter(workflow_tags=("billing", "eu")),
    RunFilter(
        workflow_name="order", workflow_tags=("beta",), search_keys=parse_search_keys(["customer"])
    ),
]


@pytest.mark.parametrize("base", FILTERS, ids=lambda f: repr(f)[10:70])
@pytest.mark.parametrize(
    ("sort_by", "order"), list(itertools.product(["start_time", "end_time"], ["asc", "desc"]))
)
def test_pages_walk_the_whole_sorted_list_once(base: RunFilter, sort_by: str, order: str) -> None:
    rows = make_rows(120)
    flt = _with(base, sort_by=sort_by, order=order)
    expected = reference(rows, flt)
    assert expected, "the filter should select something"
    for size in (1, 7, 50, len(expected), len(expected) + 1):
        pages = walk(rows, flt, size)
        assert [r for p in pages for r in p] == expected, f"page size {size}"


def _with(flt: RunFilter, **changes: Any) -> RunFilter:
    fields = {f: getattr(flt, f) for f in RunFilter.__dataclass_fields__}
    return RunFilter(**{**fields, **changes})


def test_open_runs_come_last_in_desc_and_first_in_asc_under_end_time() -> None:
    rows = make_rows(60)
    desc = reference(rows, RunFilter(sort_by="end_time", order="desc"))
    by_id = {r["_id"]: r for r in rows}
    ends = [by_id[i]["end_time"] for i in desc]
    first_open = ends.index(None)
    assert all(e is None for e in ends[first_open:])
    assert (
        walk(rows, RunFilter(sort_by="end_time", order="asc"), 9)[0][0]
        == sorted(i for i in by_id if by_id[i]["end_time"] is None)[0]
    )


def test_runs_added_before_the_cursor_in_desc_order_are_neither_seen_nor_shift_pages() -> None:
    rows = make_rows(100)
    flt = RunFilter()
    first, token = page(rows, flt, 10, None)
    existing = reference(rows, flt)
    # New runs start later than every existing one: they sort before the cursor.
    for i in range(30):
        rows.append({**rows[0], "_id": f"new-{i:02d}", "start_time": T0 + timedelta(days=1)})
    seen = [r["_id"] for r in first]
    while token:
        got, token = page(rows, flt, 10, token)
        seen += [r["_id"] for r in got]
    assert seen == existing


# --- tokens -----------------------------------------------------------------------------------


def _token_for(flt: RunFilter) -> str:
    return make_token(flt, {"_id": "run-1", flt.sort_by: T0})


def test_token_round_trips_to_a_cursor() -> None:
    flt = RunFilter(workflow_name="order")
    assert read_token(flt, _token_for(flt)) == Cursor(T0, "run-1")
    null_end = RunFilter(sort_by="end_time")
    token = make_token(null_end, {"_id": "run-2", "end_time": None})
    assert read_token(null_end, token) == Cursor(None, "run-2")


@pytest.mark.parametrize(
    "other",
    [
        RunFilter(workflow_name="invoice"),
        RunFilter(workflow_name="order", order="asc"),
        RunFilter(workflow_name="order", sort_by="end_time"),
        RunFilter(workflow_name="order", statuses=("FAILED",)),
        RunFilter(workflow_name="order", user_id="bob"),
        RunFilter(workflow_name="order", include_internal=False),
        RunFilter(workflow_name="order", search="x"),
        RunFilter(workflow_name="order", start_time_after=T0),
    ],
)
def test_token_of_other_filters_is_refused(other: RunFilter) -> None:
    token = _token_for(RunFilter(workflow_name="order"))
    with pytest.raises(BadPageToken, match="other filters"):
        read_token(other, token)


def test_status_order_does_not_change_the_token() -> None:
    a = RunFilter(statuses=("FAILED", "RUNNING"))
    b = RunFilter(statuses=("RUNNING", "FAILED"))
    assert read_token(b, _token_for(a)) == Cursor(T0, "run-1")


@pytest.mark.parametrize(
    "token",
    [
        "x",
        ".",
        "abc.def",
        "not base64!.???",
        "é.é",
        "A" * 5000,
        "eyJ9.AAAA",
    ],
)
def test_garbage_token_is_refused(token: str) -> None:
    with pytest.raises(BadPageToken, match="not a token this API issued"):
        read_token(RunFilter(), token)


def test_edited_token_is_refused() -> None:
    flt = RunFilter()
    body, _, mac = _token_for(flt).partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload[3] = "run-0"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    with pytest.raises(BadPageToken, match="not a token this API issued"):
        read_token(flt, f"{forged}.{mac}")


def _signed(payload: Any) -> str:
    raw = json.dumps(payload).encode()
    b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"{b64(raw)}.{b64(TOKENS.mac(raw))}"


@pytest.mark.parametrize(
    "payload",
    [
        [1, "f", "not a date", "run-1"],
        [2, "f", None, "run-1"],
        [1, "f", None, 7],
        [1, "f", None],
        {"v": 1},
    ],
)
def test_well_signed_but_malformed_token_is_refused(payload: Any) -> None:
    with pytest.raises(BadPageToken):
        read_token(RunFilter(), _signed(payload))


def test_null_cursor_under_a_sort_without_nulls_is_refused() -> None:
    flt = RunFilter()  # start_time: never null
    token = _signed([1, flt.fingerprint(), None, "run-1"])
    cursor = read_token(flt, token)
    with pytest.raises(BadPageToken, match="does not fit"):
        run_query.page_queries(flt, cursor)


def test_token_signed_under_another_secret_is_refused_with_a_clear_message() -> None:
    flt = RunFilter(workflow_name="order")
    token = PageTokens.from_secret(SecretStr("instance-a")).make(
        flt, {"_id": "r", "start_time": T0}
    )
    same = PageTokens.from_secret(SecretStr("instance-a"))
    assert same.read(flt, token) == Cursor(T0, "r")  # another instance, same secret
    with pytest.raises(BadPageToken, match="signed under another page-token secret"):
        PageTokens.from_secret(SecretStr("instance-b")).read(flt, token)


def test_without_a_secret_tokens_use_a_random_process_key_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING"):
        tokens = PageTokens.from_secret(None)
    assert "RUNSTORE_PAGE_TOKEN_SECRET is unset" in caplog.text
    assert PageTokens.from_secret(SecretStr("")) is tokens  # empty = unset
    flt = RunFilter()
    token = tokens.make(flt, {"_id": "r", "start_time": T0})
    assert tokens.read(flt, token) == Cursor(T0, "r")
    with pytest.raises(BadPageToken):
        TOKENS.read(flt, token)


# --- search keys and workflow tags ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("customer:acme", SearchKeyFilter("customer", "similar", "acme")),
        ("customer:a:b", SearchKeyFilter("customer", "similar", "a:b")),
        ("customer==:ACME Corp", SearchKeyFilter("customer", "exact", "ACME Corp")),
        ("customer==:", SearchKeyFilter("customer", "exact", "")),
        ("customer==:a==:b", SearchKeyFilter("customer", "exact", "a==:b")),
        ("customer", SearchKeyFilter("customer", "set")),
        ("customer==", SearchKeyFilter("customer", "null")),
        ("order-id_2", SearchKeyFilter("order-id_2", "set")),
    ],
)
def test_search_key_forms(text: str, expected: SearchKeyFilter) -> None:
    assert SearchKeyFilter.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":acme", "==:x", "==", "cust omer:x", "a.b:x", "a=b", "customer:", "k===", "é:x"]
)
def test_malformed_search_key_is_refused(text: str) -> None:
    with pytest.raises(BadSearchKey, match="search_key"):
        SearchKeyFilter.parse(text)


def test_more_than_three_search_keys_are_refused() -> None:
    assert len(parse_search_keys(["a", "b", "c"])) == 3
    with pytest.raises(BadSearchKey, match="at most 3"):
        parse_search_keys(["a", "b", "c", "d"])


def test_search_keys_and_tags_are_part_of_the_token_fingerprint() -> None:
    base = RunFilter(search_keys=parse_search_keys(["a:x"]), workflow_tags=("t",))
    token = _token_for(base)
    same = RunFilter(search_keys=parse_search_keys(["a:x", "a:x"]), workflow_tags=("t",))
    assert read_token(same, token) == Cursor(T0, "run-1")
    for other in [
        RunFilter(search_keys=parse_search_keys(["a:y"]), workflow_tags=("t",)),
        RunFilter(search_keys=parse_search_keys(["a==:x"]), workflow_tags=("t",)),
        RunFilter(search_keys=parse_search_keys(["a:x"]), workflow_tags=("t", "u")),
        RunFilter(search_keys=parse_search_keys(["a:x"])),
    ]:
        with pytest.raises(BadPageToken, match="other filters"):
            read_token(other, token)


def test_similar_search_key_escapes_its_value_and_folds_case() -> None:
    rows = make_rows(10)
    rows[0]["search_keys"] = {"customer": "Big.*Deal (EU)"}
    rows[0]["search_terms"] = search_terms(rows[0]["search_keys"])
    rows[1]["search_keys"] = {"customer": "BigXXDeal (EU)"}
    rows[1]["search_terms"] = search_terms(rows[1]["search_keys"])
    rows[2]["search_keys"] = {"customer": "line\nbreak .*deal (eu)"}
    rows[2]["search_terms"] = search_terms(rows[2]["search_keys"])
    flt = RunFilter(search_keys=parse_search_keys(["customer:.*DEAL (eu"]))
    assert sorted(r["_id"] for r in rows if matches(r, run_query.query(flt))) == [
        "run-000",
        "run-002",
    ]
