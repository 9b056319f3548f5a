"""Every secondary index Runstore reads through, declared in one place.

List queries are the only reads of the read models that are not `_id` lookups. Each
`runs` index leads with equality fields a filter can pin, then the sort field, then `_id`
as the keyset tie-break, so MongoDB serves the filter and the page from one index walk
(descending keys serve `order=asc` too, walked backwards). Which fields lead:

- the most selective equality field a query pins leads its index, by this rank:
  root_execution_id > search_terms > workflow_name > user_id > deployment_name >
  workflow_tags > status. A search key usually names one business object (an order, a
  customer), so it pins fewer runs than a workflow; a tag is shared by the runs of
  several workflows;
- `search_terms` and `workflow_tags` are arrays (multikey indexes). Each is the only
  array in its indexes (MongoDB cannot index two arrays of one document together), and
  a query pins one value of it, so the index walk still comes out in sort order. A
  query with several `search_key`s or tags walks one and checks the others on the way,
  as it does a `search_key:value` substring (a regex) after its `key` term;
- status, the most common second filter, gets compound indexes after workflow, user
  and deployment ("failed runs of workflow X"); `status` given several values is served
  by the same index (MongoDB merges one sorted walk per value);
- everything else a query holds (a second equality field, search, include_internal,
  time ranges on the field that is not the sort field) is filtered during the walk.

Every other read is by `_id` (a run not projected yet is found through the engine's run
locators, not a `commits.run_id` query). `tests/unit/test_indexes.py` builds every query
shape the API can produce and checks an index here serves it; docs/read-models.md lists
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.readmodels.store import RUNS

SORT_FIELDS = ("start_time", "end_time")

# Equality fields in the order they are preferred to lead an index (most selective first).
SELECTIVITY = (
    "root_execution_id",
    "search_terms",
    "workflow_name",
    "user_id",
    "deployment_name",
    "workflow_tags",
    "status",
)

# The equality prefixes that get an index for each sort field.
RUN_PREFIXES: tuple[tuple[str, ...], ...] = (
    (),
    ("root_execution_id",),
    ("search_terms",),
    ("workflow_name",),
    ("workflow_name", "status"),
    ("user_id",),
    ("user_id", "status"),
    ("deployment_name",),
    ("deployment_name", "status"),
    ("workflow_tags",),
    ("status",),
)


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    keys: tuple[tuple[str, int], ...]
    serves: str
    """The query this index exists for (listed in docs/read-models.md)."""


def _run_index(prefix: tuple[str, ...], sort_field: str) -> Index:
    keys = (*((f, 1) for f in prefix), (sort_field, -1), ("_id", -1))
    tag = "_".join(prefix) or "all"
    pinned = ", ".join(f"{f}=" for f in prefix) or "no equality filter"
    return Index(
        name=f"runs_{tag}_{sort_field}",
        keys=keys,
        serves=f"list_runs with {pinned}, sort_by={sort_field}",
    )


def declared_indexes() -> dict[str, list[Index]]:
    runs = [_run_index(p, s) for p in RUN_PREFIXES for s in SORT_FIELDS]
    return {RUNS: runs}
