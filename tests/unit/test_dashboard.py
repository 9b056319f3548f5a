"""The sample Grafana dashboard queries only metrics the services declare."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY

import services.common.metrics  # noqa: F401  (declares every metric)
from tests.support.servers import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "runstore-dashboard.json"


def test_every_metric_the_dashboard_queries_is_declared() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queried = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"\brunstore_[a-z_]+", target["expr"])
    }
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exposed = {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    assert queried, "the dashboard queries nothing"
    assert queried - exposed == set()
    # Every service's own metrics have a panel.
    for name in ("runstore_timers_pending", "runstore_worker_workflow_tasks_total"):
        assert name in queried
