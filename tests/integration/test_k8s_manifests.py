"""deploy/k8s renders with kustomize and validates against the Kubernetes schemas, offline;
and the rendered objects say what docs/sizing.md and the README promise."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.servers import local_script

k8s = local_script("validate", folder="k8s")


@pytest.fixture(scope="module")
def production() -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in k8s.render("overlays/production")}


@pytest.mark.parametrize("target", k8s.TARGETS)
def test_manifests_render_and_validate_strictly(target: str) -> None:
    objects = k8s.render(target)
    assert {o["kind"] for o in objects} >= {"StatefulSet", "Deployment", "Service"}
    assert list(k8s.problems(objects)) == []


def test_the_validation_refuses_a_wrong_type_and_an_unknown_field(
    production: dict[tuple[str, str], dict[str, Any]],
) -> None:
    api = production["Deployment", "runstore-api"]
    wrong = copy.deepcopy(api)
    wrong["spec"]["replicas"] = "two"
    unknown = copy.deepcopy(api)
    unknown["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    found = list(k8s.problems([wrong, unknown]))
    assert any("'two' is not of type 'integer'" in p for p in found), found
    assert any("livenesProbe" in p for p in found), found


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_production_overlay_runs_the_sized_instances_with_static_engine_ids(
    production: dict[tuple[str, str], dict[str, Any]],
) -> None:
    engine = production["StatefulSet", "runstore-engine"]
    projector = production["Deployment", "runstore-projector"]
    api = production["Deployment", "runstore-api"]
    assert (engine["spec"]["replicas"], projector["spec"]["replicas"]) == (3, 2)
    assert api["spec"]["replicas"] == 2
    assert all(o["metadata"]["namespace"] == "runstore" for o in production.values())

    # The engine's static membership id is its stable pod name.
    env = {e["name"]: e for e in _container(engine)["env"]}
    assert env["RUNSTORE_ENGINE_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    assert engine["spec"]["serviceName"] in {n for k, n in production if k == "Service"}

    config = next(o for (k, _), o in production.items() if k == "ConfigMap")
    assert config["data"]["RUNSTORE_KAFKA_BOOTSTRAP"].endswith("-kafka-bootstrap.kafka.svc:9092")
    assert config["data"]["RUNSTORE_PARTITIONS"] == "12"
    assert config["data"]["RUNSTORE_TOPIC_REPLICATION_FACTOR"] == "3"
    for obj in (engine, projector, api):
        c = _container(obj)
        assert c["image"] == "registry.example.com/runstore:0.1.0"
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), obj["metadata"]["name"]
        assert "memory" in c["resources"]["limits"], obj["metadata"]["name"]
        # Every service takes its MongoDB URL (credentials) from the Secret.
        mongo = next(e for e in c["env"] if e["name"] == "RUNSTORE_MONGO_URL")
        assert mongo["valueFrom"]["secretKeyRef"]["name"] == "runstore-secrets"
        # The generated ConfigMap's hashed name is what the pods read.
        assert c["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]

    probes = _container(api)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probes[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe


def test_every_service_is_probed_on_the_port_its_settings_serve(
    production: dict[tuple[str, str], dict[str, Any]],
) -> None:
    from services.common.settings import (
        EngineSettings,
        ProjectorSettings,
        TimersSettings,
        WorkerSettings,
    )

    config = next(o for (k, _), o in production.items() if k == "ConfigMap")
    # The probe ports listen on the pod's address, not only on loopback.
    assert config["data"]["RUNSTORE_HEALTH_HOST"] == "0.0.0.0"
    ports = {
        ("StatefulSet", "runstore-engine"): EngineSettings.model_fields[
            "engine_health_port"
        ].default,
        ("Deployment", "runstore-projector"): ProjectorSettings.model_fields[
            "projector_health_port"
        ].default,
        ("StatefulSet", "runstore-timers"): TimersSettings.model_fields[
            "timers_health_port"
        ].default,
        ("Deployment", "runstore-worker"): WorkerSettings.model_fields[
            "worker_health_port"
        ].default,
    }
    for key, port in ports.items():
        c = _container(production[key])
        assert c["ports"] == [{"name": "probes", "containerPort": port}], key
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}, key
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}, key
