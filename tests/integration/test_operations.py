"""The operator's view of a real stack: health and readiness probes, Prometheus metrics
moving under load, and the `runstore` CLI (workflow, runs, events, dlq)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from services.console.app import app
from tests.support.eventually import wait_until
from tests.support.kafka import produce
from tests.support.stack import Stack

runner = CliRunner()


@pytest.fixture
def cli(module_stack: Stack) -> Any:
    env = {
        **module_stack.env,
        "RUNSTORE_URL": module_stack.api_url,
        "RUNSTORE_API_KEY": "test-key",
        "COLUMNS": "200",
    }

    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(app, list(args), env=env)
        if ok:
            assert result.exit_code == 0, (result.output, result.exception)
        else:
            assert result.exit_code != 0, result.output
        return result.output

    return run


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


def _scrape(stack: Stack, service: str) -> str:
    reply = httpx.get(f"{stack.probe_url(service)}/metrics", timeout=5)
    assert reply.status_code == 200
    return reply.text


def test_every_service_is_alive_and_becomes_ready(module_stack: Stack) -> None:
    for service in ("api", "engine", "projector"):
        url = module_stack.probe_url(service)
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}

        def ready(url: str = url) -> dict[str, Any]:
            reply = httpx.get(f"{url}/readyz", timeout=10)
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body

        checks = wait_until(ready, timeout=60)["checks"]
        assert checks["mongodb"] == "ok" and checks["kafka"] == "ok"
        if service != "api":
            assert checks["consumer"] == "ok"


def test_metrics_move_under_load(module_stack: Stack, cli: Any) -> None:
    before_engine = _scrape(module_stack, "engine")
    before_api = _scrape(module_stack, "api")
    applied_before = _metric(
        before_engine, "runstore_commands_applied_total", type="StartWorkflow", outcome="accepted"
    )
    tag = uuid.uuid4().hex[:6]
    ids = [f"load-{tag}-{i}" for i in range(20)]
    for execution_id in ids:
        cli("workflow", "start", "loader", "--id", execution_id, "--input", '{"n": 1}')
    cli("workflow", "start", "loader", "--id", ids[0], ok=False)  # already running: 409

    def engine_counted() -> str:
        text = _scrape(module_stack, "engine")
        applied = _metric(
            text, "runstore_commands_applied_total", type="StartWorkflow", outcome="accepted"
        )
        assert applied >= applied_before + 20
        assert _metric(text, "runstore_commands_applied_total", type="StartWorkflow") > applied
        return text

    engine = wait_until(engine_counted)
    assert _metric(engine, "runstore_batch_size_count", service="engine") > 0
    assert _metric(engine, "runstore_store_latency_seconds_count", service="engine") > 0
    assert "runstore_consumer_lag{" in engine

    route = "/v1/workflows/{workflow_identifier}/execute"
    api = _scrape(module_stack, "api")
    assert (
        _metric(api, "runstore_http_request_duration_seconds_count", route=route, status="200")
        >= _metric(
            before_api, "runstore_http_request_duration_seconds_count", route=route, status="200"
        )
        + 20
    )
    assert "runstore_sse_subscribers " in api

    def projected() -> None:
        text = _scrape(module_stack, "projector")
        assert _metric(text, "runstore_batch_size_count", service="projector") > 0
        assert _metric(text, "runstore_store_latency_seconds_count", service="projector") > 0
        assert "runstore_projector_lag_events " in text

    wait_until(projected)


def test_cli_starts_signals_lists_shows_and_cancels(cli: Any) -> None:
    execution_id = f"cli-{uuid.uuid4().hex[:8]}"
    started = json.loads(
        cli("workflow", "start", "clidemo", "--id", execution_id, "-i", '{"a": 1}', "-o", "json")
    )
    assert started["execution_id"] == execution_id and started["status"] == "RUNNING"
    cli("workflow", "signal", execution_id, "nudge", "-i", '{"x": 2}')

    def listed() -> dict[str, Any]:
        page: dict[str, Any] = json.loads(
            cli("runs", "list", "--workflow", "clidemo", "--status", "RUNNING", "-o", "json")
        )
        assert [r["execution_id"] for r in page["executions"]] == [execution_id]
        return page

    wait_until(listed)
    assert execution_id in cli("runs", "list", "--workflow", "clidemo")

    def history_has_signal() -> list[str]:
        body = json.loads(cli("runs", "history", execution_id, "-o", "json"))
        types = [e.get("type") or e.get("event_type") for e in body["events"]]
        assert "WORKFLOW_EXECUTION_SIGNALED" in types
        return types

    wait_until(history_has_signal)
    assert "WORKFLOW_EXECUTION_SIGNALED" in cli("runs", "history", execution_id)

    cli("workflow", "cancel", execution_id)

    def canceled() -> None:
        shown = json.loads(cli("runs", "show", execution_id, "-o", "json"))
        assert shown["status"] == "CANCELED"

    wait_until(canceled)
    assert "CANCELED" in cli("runs", "show", started["run_id"])
    assert "HTTP 404" in cli("runs", "show", "no-such-run", ok=False)


def test_cli_list_pages_through_every_run(cli: Any) -> None:
    name = f"paged{uuid.uuid4().hex[:6]}"
    ids = {f"{name}-{i}" for i in range(5)}
    for execution_id in ids:
        cli("workflow", "start", name, "--id", execution_id)

    def all_listed() -> None:
        first = json.loads(
            cli("runs", "list", "--workflow", name, "--page-size", "2", "-o", "json")
        )
        assert len(first["executions"]) == 2 and first["next_page_token"]
        rest = json.loads(
            cli(
                "runs",
                "list",
                "--workflow",
                name,
                "--page-size",
                "2",
                "--page-token",
                first["next_page_token"],
                "--all",
                "-o",
                "json",
            )
        )
        got = [r["execution_id"] for r in first["executions"] + rest["executions"]]
        assert sorted(got) == sorted(ids)

    wait_until(all_listed)


def test_cli_events_tail_resumes_after_the_last_seen_id(cli: Any, tmp_path: Any) -> None:
    execution_id = f"tail-{uuid.uuid4().hex[:8]}"
    cli("workflow", "start", "tailed", "--id", execution_id)
    state = tmp_path / "tail.state"
    tail = ("events", "tail", "--execution", execution_id, "--state-file", str(state))

    first = json.loads(cli(*tail, "--limit", "1", "-o", "json").splitlines()[0])
    assert first["id"] == state.read_text()
    cli("workflow", "signal", execution_id, "poke")
    event = json.loads(cli(*tail, "--limit", "1", "-o", "json").splitlines()[0])
    assert event["id"] != first["id"]
    assert '"signal_name": "poke"' in json.dumps(event["data"])


def test_dlq_lists_reasons_and_replays_a_record_only_once(module_stack: Stack, cli: Any) -> None:
    env = module_stack.env
    key = f"dlq-{uuid.uuid4().hex[:8]}"
    asyncio.run(
        produce(
            env["RUNSTORE_KAFKA_BOOTSTRAP"],
            f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.commands",
            [(key, b"this is not json")],
        )
    )

    def dead_lettered() -> dict[str, Any]:
        listed = cli("dlq", "list", "-o", "json")
        rows = [r for r in json.loads(listed) if r["key"] == key]
        assert len(rows) == 1, listed
        return rows[0]

    row = wait_until(dead_lettered)
    assert row["reason"] == "invalid_json" and row["replay"] is None
    assert key in cli("dlq", "list", "--reason", "invalid_json")

    first = json.loads(cli("dlq", "replay", row["ref"], "-o", "json"))
    assert first["published"] == [row["ref"]]
    again = json.loads(cli("dlq", "replay", row["ref"], "-o", "json"))
    assert again["published"] == [] and again["already_replayed"] == [row["ref"]]

    # Still not JSON: the replayed record comes back, marked with where it came from.
    def back_again() -> list[dict[str, Any]]:
        rows = [r for r in json.loads(cli("dlq", "list", "-o", "json")) if r["key"] == key]
        assert len(rows) == 2
        return rows

    rows = back_again()
    assert [r["replay"] for r in rows] == ["published", None]
    assert "not on the dead-letter topic" in cli("dlq", "replay", "99:99", ok=False)


def test_status_lines_show_readiness_and_lag(module_stack: Stack) -> None:
    from services.console.status import service_line

    for service in ("api", "engine", "projector"):
        port = int(module_stack.probe_url(service).rsplit(":", 1)[1])
        line = wait_until(lambda s=service, p=port: _ready_line(s, p), timeout=60)
        assert line.split()[:2] == [service, "ready"] and " lag " in line
    assert "unreachable" in service_line("engine", 1)


def _ready_line(service: str, port: int) -> str:
    from services.console.status import service_line

    line = service_line(service, port)
    assert " ready " in line, line
    return line


def test_cli_schedules_create_list_show_pause_unpause_delete(cli: Any) -> None:
    schedule_id = f"nightly-{uuid.uuid4().hex[:6]}"
    created = json.loads(
        cli(
            "schedules", "create", "report", "--id", schedule_id, "--every", "1h",
            "-i", '{"day": 1}', "-o", "json",
        )
    )  # fmt: skip
    assert created == {"schedule_id": schedule_id}
    cli("schedules", "create", "report", "--id", schedule_id, "--every", "1h", ok=False)  # 409
    listed = json.loads(cli("schedules", "list", "--workflow", "report", "-o", "json"))
    assert [s["schedule_id"] for s in listed] == [schedule_id]
    assert listed[0]["input"] == {"day": 1} and listed[0]["paused"] is False
    assert schedule_id in cli("schedules", "list")
    cli("schedules", "pause", schedule_id)
    shown = json.loads(cli("schedules", "show", schedule_id, "-o", "json"))
    assert shown["paused"] is True and shown["intervals"][0]["every"]
    assert (
        json.loads(cli("schedules", "list", "--status", "paused", "-o", "json"))[0]["schedule_id"]
        == schedule_id
    )
    cli("schedules", "unpause", schedule_id)
    assert json.loads(cli("schedules", "show", schedule_id, "-o", "json"))["paused"] is False
    cli("schedules", "delete", schedule_id)
    cli("schedules", "show", schedule_id, ok=False)  # gone: 404
    assert json.loads(cli("schedules", "list", "--workflow", "report", "-o", "json")) == []


def test_cli_workers_list_shows_registered_workers(module_stack: Stack, cli: Any) -> None:
    from pymongo import AsyncMongoClient

    from schemas.registry import WorkerRegistration
    from services.common.worker_registry import WorkerRegistry

    deployment = f"blue-{uuid.uuid4().hex[:6]}"

    async def register() -> None:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            module_stack.env["RUNSTORE_MONGO_URL"], tz_aware=True
        )
        try:
            registry = WorkerRegistry(mongo[module_stack.env["RUNSTORE_MONGO_DATABASE"]])
            await registry.register(
                WorkerRegistration(
                    worker_id="w-cli-1", deployment_name=deployment, host="h1", pid=7,
                    version="2.0", heartbeat_interval_seconds=60.0,
                )
            )  # fmt: skip
        finally:
            await mongo.close()

    asyncio.run(register())
    rows = json.loads(cli("workers", "list", "--deployment", deployment, "-o", "json"))
    assert [(r["deployment"], r["name"], r["is_active"], r["pid"]) for r in rows] == [
        (deployment, "w-cli-1", True, 7)
    ]
    everyone = json.loads(cli("workers", "list", "-o", "json"))
    assert any(r["name"] == "w-cli-1" and r["deployment"] == deployment for r in everyone)
    table = cli("workers", "list", "--deployment", deployment)
    assert "w-cli-1" in table and "h1" in table


def test_cli_schedules_trigger_starts_a_run_of_a_paused_schedule(cli: Any) -> None:
    schedule_id = f"adhoc-{uuid.uuid4().hex[:6]}"
    cli("schedules", "create", "report", "--id", schedule_id, "--every", "1h", "-i", '{"n": 2}')
    cli("schedules", "pause", schedule_id)
    mine = ("runs", "list", "--search-key", f"schedule_id==:{schedule_id}", "-o", "json")
    assert json.loads(cli(*mine))["executions"] == []
    assert f"triggered a run of {schedule_id}" in cli("schedules", "trigger", schedule_id)

    def started() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(cli(*mine))["executions"]
        assert len(rows) == 1, rows
        return rows

    [run] = wait_until(started, timeout=30)
    assert run["workflow_name"] == "report" and run["execution_id"].startswith(schedule_id)
    assert json.loads(cli("schedules", "show", schedule_id, "-o", "json"))["paused"] is True
    cli("schedules", "trigger", "no-such-schedule", ok=False)  # 404
