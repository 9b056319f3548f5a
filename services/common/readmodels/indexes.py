"""Every secondary index of the read models, declared in one place.

List queries are the only reads that are not `_id` lookups. Each index leads with the
equality fields a filter can pin, then the sort field, then `_id` as the tie-break, so
MongoDB serves the filter and the keyset sort from one index scan. A unit test builds
every query shape the API can produce and checks one of these indexes serves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.readmodels.store import RUNS


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    keys: list[tuple[str, int]]


def _by_time(prefix: list[str], tag: str) -> list[Index]:
    out: list[Index] = []
    for sort_field in ("start_time", "end_time"):
        keys = [(f, 1) for f in prefix] + [(sort_field, -1), ("_id", -1)]
        out.append(Index(f"runs_{tag}_{sort_field}", keys))
    return out


def declared_indexes() -> dict[str, list[Index]]:
    runs: list[Index] = []
    runs += _by_time([], "all")
    runs += _by_time(["workflow_name"], "workflow")
    runs += _by_time(["root_execution_id"], "root")
    runs += _by_time(["status"], "status")
    runs += _by_time(["user_id"], "user")
    runs += _by_time(["deployment_name"], "deployment")
    return {RUNS: runs}
