"""Every secondary index Runstore reads through, declared in one place.

List queries are the only reads of the read models that are not `_id` lookups. Each
`runs` index leads with equality fields a filter can pin, then the sort field, then `_id`
as the keyset tie-break, so MongoDB serves the filter and the page from one index walk
(descending keys serve `order=asc` too, walked backwards). Which fields lead:

- the most selective equality field a query pins leads its index, by this rank:
  root_execution_id > workflow_name > user_id > deployment_name > status;
- status, the most common second filter, gets compound indexes after workflow, user
  and deployment ("failed runs of workflow X"); `status` given several values is served
  by the same index (MongoDB merges one sorted walk per value);
- everything else a query holds (a second equality field, search, include_internal,
  time ranges on the field that is not the sort field) is filtered during the walk.

`commits.run_id` serves the one fallback the API has when a run is not projected yet
(find its execution). `tests/unit/test_indexes.py` builds every query shape the API can
produce and checks an index here serves it; docs/read-models.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.readmodels.store import RUNS

SORT_FIELDS = ("start_time", "end_time")

# Equality fields in the order they are preferred to lead an index (most selective first).
SELECTIVITY = ("root_execution_id", "workflow_name", "user_id", "deployment_name", "status")

# The equality prefixes that get an index for each sort field.
RUN_PREFIXES: tuple[tuple[str, ...], ...] = (
    (),
    ("root_execution_id",),
    ("workflow_name",),
    ("workflow_name", "status"),
    ("user_id",),
    ("user_id", "status"),
    ("deployment_name",),
    ("deployment_name", "status"),
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
