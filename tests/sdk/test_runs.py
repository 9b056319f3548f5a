"""`list_runs`, `get_run` and `get_workflow_execution` driven by the official SDK against
the real stack (engine, projector, API on Kafka and the MongoDB-protocol server).

One data set is seeded per module through the commands topic: runs of three workflows,
three users, two deployments, internal runs, display names, a tree of child executions,
a continue-as-new, and every status. Expected answers are computed in Python from what
was seeded plus the times point reads report, then compared with what the list returns.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, SDKError

from tests.support.eventually import wait_until
from tests.support.kafka import command, publish
from tests.support.stack import Stack

# --- seeding ------------------------------------------------------------------------------------

STATUS_CYCLE = ["RUNNING", "COMPLETED", "FAILED", "CANCELED", "TERMINATED", "TIMED_OUT"]


@dataclass
class Seeded:
    execution_id: str
    run_id: str
    workflow: str
    user: str
    status: str
    deployment: str | None = None
    internal: bool = False
    display_name: str | None = None
    root: str | None = None
    parent: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    search_keys: dict[str, str | None] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


@dataclass
class DataSet:
    tag: str
    runs: dict[str, Seeded] = field(default_factory=dict)  # by run_id

    def ids(self, keep: Callable[[Seeded], bool] = lambda r: True) -> set[str]:
        return {r.run_id for r in self.runs.values() if keep(r)}


def start_command(
    execution_id: str, workflow: str, user: str, run_id: str, **payload: Any
) -> dict[str, Any]:
    cmd = command("StartWorkflow", execution_id, workflow_name=workflow, run_id=run_id, **payload)
    cmd["user_id"] = user
    return cmd


def closing_command(status: str, execution_id: str, run_id: str) -> list[dict[str, Any]]:
    """Commands that take a RUNNING run to `status` (none for RUNNING)."""
    if status == "COMPLETED":
        return [command("CompleteExecution", execution_id, run_id=run_id, result={"n": 1})]
    if status == "FAILED":
        failure = {"message": "boom"}
        return [
            command("FailExecution", execution_id, run_id=run_id, failure=failure, retryable=False)
        ]
    if status == "CANCELED":
        return [command("CancelExecution", execution_id, reason="enough")]
    if status == "TERMINATED":
        return [command("TerminateExecution", execution_id)]
    if status == "TIMED_OUT":
        return [command("TimeOutExecution", execution_id, run_id=run_id)]
    if status == "CONTINUED_AS_NEW":
        return [command("ContinueAsNew", execution_id, run_id=run_id, input={"again": True})]
    assert status == "RUNNING"
    return []


def seed(stack: Stack, client: Mistral) -> DataSet:
    tag = uuid.uuid4().hex[:8]
    ds = DataSet(tag)
    users = itertools.cycle(["alice", "bob", "carol", "bob"])
    deployments = itertools.cycle([None, "prod", "dev"])
    records: list[tuple[str, dict[str, Any]]] = []

    def add(s: Seeded) -> None:
        payload: dict[str, Any] = {"internal": s.internal}
        if s.deployment:
            payload["deployment_name"] = s.deployment
        if s.display_name:
            payload["display_name"] = s.display_name
        if s.parent:
            payload["parent_execution_id"] = s.parent
        if s.root:
            payload["root_execution_id"] = s.root
        if s.search_keys:
            payload["search_keys"] = s.search_keys
        if s.tags:
            payload["workflow_tags"] = s.tags
        records.append(
            (s.execution_id, start_command(s.execution_id, s.workflow, s.user, s.run_id, **payload))
        )
        for c in closing_command(s.status, s.execution_id, s.run_id):
            records.append((s.execution_id, c))
        ds.runs[s.run_id] = s

    customers = itertools.cycle(["ACME Corp", "acme-eu", "Globex", None])
    for i in range(42):
        keys: dict[str, str | None] = {}
        if i % 2 == 0:
            keys["customer"] = next(customers)
        if i % 5 == 0:
            keys["order"] = f"O-{i}"
        add(
            Seeded(
                execution_id=f"{tag}-e{i:02d}",
                run_id=f"{tag}-r{i:02d}",
                workflow=f"{['alpha', 'beta', 'gamma'][i % 3]}-{tag}",
                user=next(users),
                status=STATUS_CYCLE[i % len(STATUS_CYCLE)],
                deployment=next(deployments),
                internal=i % 7 == 0,
                display_name=f"Nightly Report {tag} #{i}" if i % 5 == 0 else None,
                search_keys=keys,
                # Tags belong to the workflow: alpha has two, beta one, gamma none.
                tags=[["billing", "nightly"], ["billing"], []][i % 3],
            )
        )
    root = f"{tag}-tree"
    add(Seeded(root, f"{tag}-rt", f"tree-{tag}", "alice", "RUNNING"))
    add(
        Seeded(
            f"{root}-c1", f"{tag}-rc1", f"leaf-{tag}", "alice", "COMPLETED", root=root, parent=root
        )
    )
    add(
        Seeded(
            f"{root}-c2", f"{tag}-rc2", f"leaf-{tag}", "alice", "RUNNING", root=root, parent=root
        )
    )
    add(
        Seeded(
            f"{root}-g1",
            f"{tag}-rg1",
            f"leaf-{tag}",
            "bob",
            "FAILED",
            root=root,
            parent=f"{root}-c1",
        )
    )
    add(Seeded(f"{tag}-other", f"{tag}-ro", f"tree-{tag}", "alice", "RUNNING"))
    add(Seeded(f"{tag}-can", f"{tag}-rcan", f"loop-{tag}", "carol", "CONTINUED_AS_NEW"))
    publish(stack.env, records)

    def projected() -> None:
        got = client.workflows.runs.list_runs(search=tag, page_size=1000)
        assert got is not None
        by_run = {r.run_id: r for r in got.result.executions}
        for s in ds.runs.values():
            assert s.run_id in by_run, f"{s.run_id} not listed yet"
            assert by_run[s.run_id].status == s.status, f"{s.run_id} not {s.status} yet"
        loop = [r for r in got.result.executions if r.workflow_name == f"loop-{tag}"]
        assert len(loop) == 2, "the continue-as-new successor is not listed yet"

    wait_until(projected, timeout=60)
    # The continue-as-new successor: a run of another execution, found through the list.
    listed = client.workflows.runs.list_runs(workflow_identifier=f"loop-{tag}", page_size=100)
    assert listed is not None
    for row in listed.result.executions:
        if row.run_id not in ds.runs:
            assert row.run_id is not None
            ds.runs[row.run_id] = Seeded(
                row.execution_id, row.run_id, f"loop-{tag}", "carol", "RUNNING"
            )
    # Times come from point reads (another code path than the list).
    for s in ds.runs.values():
        got = client.workflows.runs.get_run(run_id=s.run_id)
        s.start_time, s.end_time = got.start_time, got.end_time
        assert got.status == s.status and got.execution_id == s.execution_id
    return ds


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(module_stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=module_stack.api_url)


@pytest.fixture(scope="module")
def data(module_stack: Stack, client: Mistral) -> DataSet:
    return seed(module_stack, client)


def listed(client: Mistral, **kw: Any) -> list[Any]:
    """Every row of list_runs with these arguments, paging with `.next()`."""
    page = client.workflows.runs.list_runs(**kw)
    rows: list[Any] = []
    while page is not None:
        rows += page.result.executions
        page = page.next()
    return rows


def run_ids(client: Mistral, **kw: Any) -> list[str]:
    return [r.run_id for r in listed(client, **kw)]


def expected_order(
    ds: DataSet, keep: Callable[[Seeded], bool], sort_by: str, order: str
) -> list[str]:
    """MongoDB's order: null below every date, ties broken by run id."""

    def value(s: Seeded) -> datetime | None:
        return s.start_time if sort_by == "start_time" else s.end_time

    rows = [s for s in ds.runs.values() if keep(s)]
    nulls = sorted((s for s in rows if value(s) is None), key=lambda s: s.run_id)
    dated = sorted((s for s in rows if value(s) is not None), key=lambda s: (value(s), s.run_id))
    ordered = nulls + dated
    if order == "desc":
        ordered.reverse()
    return [s.run_id for s in ordered]


def mine(ds: DataSet, ids: list[str]) -> set[str]:
    return {i for i in ids if i in ds.runs}


# --- filters ------------------------------------------------------------------------------------


def test_list_runs_workflow_identifier_selects_that_workflow(
    client: Mistral, data: DataSet
) -> None:
    name = f"alpha-{data.tag}"
    assert set(run_ids(client, workflow_identifier=name)) == data.ids(lambda r: r.workflow == name)


def test_list_runs_root_execution_id_returns_the_root_and_all_descendants(
    client: Mistral, data: DataSet
) -> None:
    root = f"{data.tag}-tree"
    got = set(run_ids(client, root_execution_id=root))
    assert got == {f"{data.tag}-rt", f"{data.tag}-rc1", f"{data.tag}-rc2", f"{data.tag}-rg1"}


def test_list_runs_search_is_case_insensitive_over_name_display_name_and_id(
    client: Mistral, data: DataSet
) -> None:
    assert set(run_ids(client, search=data.tag.upper())) == data.ids()  # execution ids
    by_display = set(run_ids(client, search=f"nightly REPORT {data.tag}"))
    assert by_display == data.ids(lambda r: r.display_name is not None)
    by_name = set(run_ids(client, search=f"GAMMA-{data.tag}"))
    assert by_name == data.ids(lambda r: r.workflow == f"gamma-{data.tag}")
    assert run_ids(client, search=f"{data.tag}.*") == []  # not a pattern


@pytest.mark.parametrize(
    "statuses", [["FAILED"], ["RUNNING", "TIMED_OUT"], ["CANCELED", "TERMINATED", "COMPLETED"]]
)
def test_list_runs_status_one_or_many(client: Mistral, data: DataSet, statuses: list[str]) -> None:
    status: Any = statuses[0] if len(statuses) == 1 else statuses
    rows = listed(client, status=status, search=data.tag)
    assert {r.run_id for r in rows} == data.ids(lambda r: r.status in statuses)
    assert {r.status for r in rows} == set(statuses)


def test_list_runs_unknown_status_matches_nothing(client: Mistral, data: DataSet) -> None:
    assert run_ids(client, status="NOT_A_STATUS", search=data.tag) == []


def test_list_runs_deployment_name(client: Mistral, data: DataSet) -> None:
    assert set(run_ids(client, deployment_name="prod", search=data.tag)) == data.ids(
        lambda r: r.deployment == "prod"
    )


def test_list_runs_user_id_and_current_user(
    client: Mistral, module_stack: Stack, data: DataSet
) -> None:
    bob = data.ids(lambda r: r.user == "bob")
    assert set(run_ids(client, user_id="bob", search=data.tag)) == bob
    as_bob = Mistral(api_key="bob-key", server_url=module_stack.api_url)
    assert set(run_ids(as_bob, user_id="current", search=data.tag)) == bob
    alice = data.ids(lambda r: r.user == "alice")
    assert set(run_ids(client, user_id="current", search=data.tag)) == alice


def test_list_runs_include_internal_false_leaves_internal_runs_out(
    client: Mistral, data: DataSet
) -> None:
    assert data.ids(lambda r: r.internal)
    got = set(run_ids(client, include_internal=False, search=data.tag))
    assert got == data.ids(lambda r: not r.internal)
    assert set(run_ids(client, include_internal=True, search=data.tag)) == data.ids()


def test_list_runs_start_time_bounds_are_inclusive(client: Mistral, data: DataSet) -> None:
    times = sorted({s.start_time for s in data.runs.values() if s.start_time})
    low, high = times[len(times) // 4], times[3 * len(times) // 4]
    got = set(run_ids(client, search=data.tag, start_time_after=low, start_time_before=high))
    assert got == data.ids(lambda r: r.start_time is not None and low <= r.start_time <= high)
    assert got and any(data.runs[i].start_time == low for i in got)


def test_list_runs_end_time_filters_exclude_running_runs(client: Mistral, data: DataSet) -> None:
    ends = sorted({s.end_time for s in data.runs.values() if s.end_time})
    early = ends[0] - timedelta(days=1)
    got = set(run_ids(client, search=data.tag, end_time_after=early))
    assert got == data.ids(lambda r: r.end_time is not None)
    assert not any(data.runs[i].status == "RUNNING" for i in got)
    mid = ends[len(ends) // 2]
    got = set(run_ids(client, search=data.tag, end_time_before=mid))
    assert got == data.ids(lambda r: r.end_time is not None and r.end_time <= mid)


def test_list_runs_combined_filters(client: Mistral, data: DataSet) -> None:
    name = f"beta-{data.tag}"
    got = set(
        run_ids(client, workflow_identifier=name, status=["RUNNING", "FAILED"], user_id="bob")
    )
    assert got == data.ids(
        lambda r: r.workflow == name and r.status in ("RUNNING", "FAILED") and r.user == "bob"
    )


def _key(r: Seeded, key: str) -> str | None:
    return r.search_keys.get(key)


def test_list_runs_search_key_similar_value_is_a_case_insensitive_substring(
    client: Mistral, data: DataSet
) -> None:
    acme = data.ids(lambda r: "acme" in (_key(r, "customer") or "").lower())
    assert len(acme) > 2
    assert set(run_ids(client, search_key=["customer:acme"], search=data.tag)) == acme
    corp = data.ids(lambda r: _key(r, "customer") == "ACME Corp")
    assert set(run_ids(client, search_key=["customer:me cO"], search=data.tag)) == corp
    assert run_ids(client, search_key=["customer:acme.*"], search=data.tag) == []


def test_list_runs_search_key_exact_value_is_case_sensitive(client: Mistral, data: DataSet) -> None:
    eu = data.ids(lambda r: _key(r, "customer") == "acme-eu")
    assert eu
    assert set(run_ids(client, search_key=["customer==:acme-eu"], search=data.tag)) == eu
    assert run_ids(client, search_key=["customer==:ACME-EU"], search=data.tag) == []
    assert run_ids(client, search_key=["customer==:acme"], search=data.tag) == []


def test_list_runs_bare_search_key_means_the_key_is_set(client: Mistral, data: DataSet) -> None:
    has_customer = data.ids(lambda r: "customer" in r.search_keys)
    assert data.ids(lambda r: "customer" in r.search_keys and _key(r, "customer") is None)
    # Paged, so the filters travel in the token's fingerprint too.
    got = run_ids(client, search_key=["customer"], search=data.tag, page_size=4)
    assert len(got) == len(set(got)) and set(got) == has_customer


def test_list_runs_search_key_equals_nothing_means_the_value_is_null(
    client: Mistral, data: DataSet
) -> None:
    null = data.ids(lambda r: "customer" in r.search_keys and _key(r, "customer") is None)
    assert null
    assert set(run_ids(client, search_key=["customer=="], search=data.tag)) == null
    assert run_ids(client, search_key=["order=="], search=data.tag) == []


def test_list_runs_search_keys_are_anded(client: Mistral, data: DataSet) -> None:
    both = data.ids(
        lambda r: "acme" in (_key(r, "customer") or "").lower() and "order" in r.search_keys
    )
    assert both
    got = set(run_ids(client, search_key=["customer:ACME", "order"], search=data.tag))
    assert got == both
    one = data.runs[sorted(both)[0]]
    three = ["customer:ACME", "order", f"order==:{one.search_keys['order']}"]
    assert run_ids(client, search_key=three, search=data.tag) == [one.run_id]


def test_list_runs_workflow_tags_selects_workflows_with_every_tag(
    client: Mistral, data: DataSet
) -> None:
    billing = data.ids(lambda r: "billing" in r.tags)
    assert set(run_ids(client, workflow_tags=["billing"], search=data.tag)) == billing
    both = data.ids(lambda r: {"billing", "nightly"} <= set(r.tags))
    assert both and both < billing
    got = set(run_ids(client, workflow_tags=["nightly", "billing"], search=data.tag))
    assert got == both
    assert run_ids(client, workflow_tags=["billing", "unknown"], search=data.tag) == []


def test_list_runs_search_keys_tags_and_other_filters_combine(
    client: Mistral, data: DataSet
) -> None:
    name = f"alpha-{data.tag}"
    got = set(
        run_ids(client, workflow_identifier=name, workflow_tags=["billing"], search_key=["order"])
    )
    assert got == data.ids(lambda r: r.workflow == name and "order" in r.search_keys)


@pytest.mark.parametrize(
    "keys",
    [["customer:"], ["cust omer:x"], [":x"], ["a.b==:x"], ["a", "b", "c", "d"]],
)
def test_malformed_search_key_or_more_than_three_is_422(client: Mistral, keys: list[str]) -> None:
    with pytest.raises(HTTPValidationError) as err:
        client.workflows.runs.list_runs(search_key=keys)
    assert err.value.data.detail
    detail = err.value.data.detail[0]
    assert list(detail.loc) == ["query", "search_key"]
    assert "search_key" in detail.msg


def test_get_workflow_execution_includes_search_keys_when_asked(
    client: Mistral, data: DataSet
) -> None:
    with_null = next(
        r for r in data.runs.values() if "customer" in r.search_keys and _key(r, "customer") is None
    )
    without = next(r for r in data.runs.values() if r.execution_id.endswith("-e01"))
    assert without.search_keys == {}
    for s in (with_null, without):
        got = client.workflows.executions.get_workflow_execution(
            execution_id=s.execution_id, include_search_keys=True
        )
        assert got.search_keys == s.search_keys
        plain = client.workflows.executions.get_workflow_execution(execution_id=s.execution_id)
        assert plain.search_keys is None


def test_list_rows_have_the_list_item_fields(client: Mistral, data: DataSet) -> None:
    rows = {r.run_id: r for r in listed(client, root_execution_id=f"{data.tag}-tree")}
    grandchild = rows[f"{data.tag}-rg1"]
    assert grandchild.execution_id == f"{data.tag}-tree-g1"
    assert grandchild.root_execution_id == f"{data.tag}-tree"
    assert grandchild.parent_execution_id == f"{data.tag}-tree-c1"
    assert grandchild.status == "FAILED" and grandchild.end_time is not None
    assert grandchild.total_duration_ms is not None and grandchild.user_id == "bob"
    assert rows[f"{data.tag}-rt"].parent_execution_id is None


# --- sorting and paging -------------------------------------------------------------------------


@pytest.mark.parametrize("sort_by", ["start_time", "end_time"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_list_runs_sorts_and_pages_through_more_than_three_pages(
    client: Mistral, data: DataSet, sort_by: str, order: str
) -> None:
    expected = expected_order(data, lambda r: True, sort_by, order)
    first = client.workflows.runs.list_runs(
        search=data.tag, sort_by=sort_by, order=order, page_size=6
    )  # type: ignore[arg-type]
    pages, page = [], first
    while page is not None:
        pages.append([r.run_id for r in page.result.executions])
        page = page.next()
    assert len(pages) > 3
    assert all(len(p) == 6 for p in pages[:-1]), "non-final pages must be full"
    assert [i for p in pages for i in p] == expected


def test_list_runs_default_order_is_newest_start_first(client: Mistral, data: DataSet) -> None:
    assert run_ids(client, search=data.tag, page_size=1000) == expected_order(
        data, lambda r: True, "start_time", "desc"
    )


def test_paging_while_runs_are_added_has_no_duplicates_and_no_gaps(
    client: Mistral, module_stack: Stack
) -> None:
    tag = uuid.uuid4().hex[:8]
    workflow = f"busy-{tag}"
    existing = {f"{tag}-r{i:02d}" for i in range(25)}
    publish(
        module_stack.env,
        [
            (
                f"{tag}-e{i:02d}",
                start_command(f"{tag}-e{i:02d}", workflow, "alice", f"{tag}-r{i:02d}"),
            )
            for i in range(25)
        ],
    )
    wait_until(lambda: _assert_count(client, workflow, 25), timeout=60)
    for order in ("desc", "asc"):
        page = client.workflows.runs.list_runs(
            workflow_identifier=workflow, order=order, page_size=4
        )  # type: ignore[arg-type]
        seen: list[str] = []
        added = 0
        while page is not None:
            seen += [r.run_id for r in page.result.executions]
            # More runs arrive between pages, through the HTTP API.
            client.workflows.execute_workflow(
                workflow_identifier=workflow, execution_id=f"{tag}-{order}-{added}"
            )
            added += 1
            page = page.next()
        assert len(seen) == len(set(seen)), f"duplicates in {order} paging"
        assert existing <= set(seen), f"gaps in {order} paging: {existing - set(seen)}"


def _assert_count(client: Mistral, workflow: str, n: int) -> None:
    got = client.workflows.runs.list_runs(workflow_identifier=workflow, page_size=1000)
    assert got is not None and len(got.result.executions) == n


def test_a_full_last_page_may_carry_a_token_and_the_next_page_is_empty(
    client: Mistral, data: DataSet
) -> None:
    name = f"alpha-{data.tag}"
    n = len(data.ids(lambda r: r.workflow == name))
    page = client.workflows.runs.list_runs(workflow_identifier=name, page_size=n)
    assert page is not None and len(page.result.executions) == n
    assert page.result.next_page_token is None or page.next() is None


# --- errors -------------------------------------------------------------------------------------


def http(stack: Stack, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{stack.api_url}{path}", params=params, headers={"Authorization": "Bearer test-key"}
    )


@pytest.mark.parametrize("size", [0, -1, 1001])
def test_page_size_out_of_range_is_422(client: Mistral, size: int) -> None:
    with pytest.raises(HTTPValidationError) as err:
        client.workflows.runs.list_runs(page_size=size)
    assert err.value.data.detail
    assert err.value.data.detail[0].loc[-1] == "page_size"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sort_by", "name"),
        ("order", "sideways"),
        ("start_time_after", "yesterday"),
        ("include_internal", "maybe"),
    ],
)
def test_bad_list_parameters_are_422_with_fastapi_detail(
    module_stack: Stack, name: str, value: str
) -> None:
    res = http(module_stack, "/v1/workflows/runs", **{name: value})
    assert res.status_code == 422
    assert res.json()["detail"][0]["loc"] == ["query", name]


def test_forged_page_token_is_400_with_a_message(client: Mistral) -> None:
    for token in ["garbage", "eyJ9.AAAA", "a" * 3000, "%%%"]:
        with pytest.raises(SDKError) as err:
            client.workflows.runs.list_runs(next_page_token=token)
        assert err.value.status_code == 400
        assert "next_page_token" in err.value.body


def test_page_tokens_survive_a_restart_under_one_secret_and_fail_under_another(
    client: Mistral, module_stack: Stack, data: DataSet, tmp_path: Path
) -> None:
    def api(secret: str) -> Stack:
        other = Stack(
            env={**module_stack.env, "RUNSTORE_PAGE_TOKEN_SECRET": secret}, log_dir=tmp_path
        )
        other.start("api")
        return other

    expected = expected_order(data, lambda r: True, "start_time", "desc")
    first = api("secret-one")
    try:
        sdk = Mistral(api_key="test-key", server_url=first.api_url)
        page = sdk.workflows.runs.list_runs(search=data.tag, page_size=5)
        assert page is not None and page.result.next_page_token
        token = page.result.next_page_token
    finally:
        first.stop_all()
    restarted = api("secret-one")  # a restart, or another instance with the same secret
    try:
        sdk = Mistral(api_key="test-key", server_url=restarted.api_url)
        page = sdk.workflows.runs.list_runs(search=data.tag, page_size=5, next_page_token=token)
        assert page is not None
        assert [r.run_id for r in page.result.executions] == expected[5:10]
    finally:
        restarted.stop_all()
    other = api("secret-two")
    try:
        for sdk in (Mistral(api_key="test-key", server_url=other.api_url), client):
            with pytest.raises(SDKError) as err:
                sdk.workflows.runs.list_runs(search=data.tag, page_size=5, next_page_token=token)
            assert err.value.status_code == 400
            assert "signed under another page-token secret" in err.value.body
    finally:
        other.stop_all()


def test_page_token_of_other_filters_is_400(client: Mistral, data: DataSet) -> None:
    first = client.workflows.runs.list_runs(search=data.tag, page_size=2)
    assert first is not None and first.result.next_page_token
    token = first.result.next_page_token
    for other in [
        {"search": data.tag, "order": "asc"},
        {"search": "other"},
        {"search": data.tag, "sort_by": "end_time"},
    ]:
        with pytest.raises(SDKError) as err:
            client.workflows.runs.list_runs(page_size=2, next_page_token=token, **other)  # type: ignore[arg-type]
        assert err.value.status_code == 400
        assert "other filters" in err.value.body
    # The same filters with another page size are fine.
    assert (
        client.workflows.runs.list_runs(search=data.tag, page_size=3, next_page_token=token)
        is not None
    )


def test_unknown_run_and_execution_are_404_with_a_message(client: Mistral) -> None:
    for call in (
        lambda: client.workflows.runs.get_run(run_id="no-such-run"),
        lambda: client.workflows.executions.get_workflow_execution(
            execution_id="no-such-execution"
        ),
    ):
        with pytest.raises(SDKError) as err:
            call()
        assert err.value.status_code == 404
        assert "not found" in err.value.body


# --- point reads --------------------------------------------------------------------------------


def test_get_run_of_each_status_matches_the_list_row(client: Mistral, data: DataSet) -> None:
    rows = {r.run_id: r for r in listed(client, search=data.tag, page_size=1000)}
    for s in data.runs.values():
        got = client.workflows.runs.get_run(run_id=s.run_id)
        row = rows[s.run_id]
        assert (got.status, got.start_time, got.end_time, got.execution_id) == (
            row.status,
            row.start_time,
            row.end_time,
            row.execution_id,
        )
        assert (got.result == {"n": 1}) == (s.status == "COMPLETED")


def test_get_run_right_after_execute_reflects_it(client: Mistral) -> None:
    for n in range(5):
        execution_id = f"now-{uuid.uuid4().hex[:8]}-{n}"
        started = client.workflows.execute_workflow(
            workflow_identifier="instant", execution_id=execution_id
        )
        assert started.run_id
        # No waiting: the projector has most likely not written the run yet.
        got = client.workflows.runs.get_run(run_id=started.run_id)
        assert got.status == "RUNNING" and got.execution_id == execution_id
        history = client.workflows.runs.get_run_history(run_id=started.run_id)
        assert [e["type"] for e in history["events"]] == ["WORKFLOW_EXECUTION_STARTED"]


def test_get_workflow_execution_is_the_latest_run(client: Mistral, module_stack: Stack) -> None:
    execution_id = f"again-{uuid.uuid4().hex[:8]}"
    first = client.workflows.execute_workflow(
        workflow_identifier="twice", execution_id=execution_id
    )
    publish(module_stack.env, [(execution_id, command("TerminateExecution", execution_id))])
    wait_until(
        lambda: _assert_status(client, execution_id, "TERMINATED"),
    )
    second = client.workflows.execute_workflow(
        workflow_identifier="twice", execution_id=execution_id
    )
    assert second.run_id != first.run_id
    got = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert got.run_id == second.run_id and got.status == "RUNNING"
    assert client.workflows.runs.get_run(run_id=first.run_id).status == "TERMINATED"


def _assert_status(client: Mistral, execution_id: str, status: str) -> None:
    assert (
        client.workflows.executions.get_workflow_execution(execution_id=execution_id).status
        == status
    )
