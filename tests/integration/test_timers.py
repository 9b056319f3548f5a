"""The timers service as a real process: execution timeouts, retry back-off, timers of
closed runs, on real Kafka and the MongoDB-protocol server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from services.common.commit_log import commit_from_doc
from services.console.status import service_line
from tests.support.eventually import assert_eventually
from tests.support.kafka import command, commits_of, produce, read_topic, topic
from tests.support.stack import TIMERS_STACK, Stack, StackWith

AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture(scope="module")
def timers_stack(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with(services=TIMERS_STACK) as stack:
        yield stack


async def execute(stack: Stack, execution_id: str, **extensions: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.api_url, headers=AUTH, timeout=30) as http:
        answer = await http.post(
            "/v1/workflows/wf/execute",
            json={"execution_id": execution_id, "input": {}, "extensions": extensions},
        )
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def events_of(stack: Stack, execution_id: str) -> list[dict[str, Any]]:
    commits = await commits_of(stack.env, execution_id)
    out: list[dict[str, Any]] = []
    for doc in commits:
        commit = commit_from_doc(doc)
        out.extend(e.model_dump(mode="json") for e in commit.events)
    return out


async def report(stack: Stack, kind: str, execution_id: str, **payload: Any) -> None:
    env = stack.env
    await produce(
        env["RUNSTORE_KAFKA_BOOTSTRAP"],
        topic(env, "commands"),
        [(execution_id, command(kind, execution_id, **payload))],
    )


async def test_execution_timeout_over_http_times_out_the_run_within_a_second(
    timers_stack: Stack,
) -> None:
    started = await execute(timers_stack, "to-1", execution_timeout_seconds=2)
    assert started["status"] == "RUNNING"

    async def timed_out() -> dict[str, Any]:
        events = await events_of(timers_stack, "to-1")
        assert events[-1]["type"] == "WORKFLOW_EXECUTION_TIMED_OUT", [e["type"] for e in events]
        return events[-1]

    last = await assert_eventually(timed_out, timeout=30, interval=0.1)
    first = (await events_of(timers_stack, "to-1"))[0]
    deadline_ns = first["timestamp_ns"] + 2_000_000_000
    late_s = (last["timestamp_ns"] - deadline_ns) / 1e9
    assert 0 <= late_s < 1.0, f"timed out {late_s:.3f}s after its deadline"
    assert last["command_id"] == f"timer:to-1:{first['run_id']}:execution-timeout:{deadline_ns}"


async def test_failing_run_is_retried_after_its_back_off_then_fails_after_the_last_attempt(
    timers_stack: Stack,
) -> None:
    policy = {"max_attempts": 3, "initial_interval_seconds": 0.5, "backoff_coefficient": 2.0}
    started = await execute(timers_stack, "retry-1", retry_policy=policy)
    run_id = started["run_id"]
    failure = {"message": "boom"}
    for attempt in (1, 2):
        await report(timers_stack, "FailExecution", "retry-1", run_id=run_id, failure=failure)

        async def retried(attempt: int = attempt) -> list[dict[str, Any]]:
            events = await events_of(timers_stack, "retry-1")
            types = [e["type"] for e in events]
            assert types.count("WORKFLOW_EXECUTION_RETRY_STARTED") == attempt, types
            return events

        events = await assert_eventually(retried, timeout=30, interval=0.1)
        scheduled = [e for e in events if e["type"] == "WORKFLOW_EXECUTION_RETRY_SCHEDULED"][-1]
        restarted = [e for e in events if e["type"] == "WORKFLOW_EXECUTION_RETRY_STARTED"][-1]
        delay = scheduled["attributes"]["delay_seconds"]
        assert delay == 0.5 * 2 ** (attempt - 1)
        waited = (restarted["timestamp_ns"] - scheduled["timestamp_ns"]) / 1e9
        assert waited >= delay, f"retried after {waited:.3f}s, back-off was {delay}s"
        assert restarted["attributes"]["attempt"] == attempt + 1
    await report(timers_stack, "FailExecution", "retry-1", run_id=run_id, failure=failure)

    async def failed() -> None:
        types = [e["type"] for e in await events_of(timers_stack, "retry-1")]
        assert types[-1] == "WORKFLOW_EXECUTION_FAILED", types

    await assert_eventually(failed, timeout=30, interval=0.1)


async def test_retried_run_completes(timers_stack: Stack) -> None:
    policy = {"max_attempts": 2, "initial_interval_seconds": 0.2}
    started = await execute(timers_stack, "retry-2", retry_policy=policy)
    await report(
        timers_stack, "FailExecution", "retry-2", run_id=started["run_id"], failure={"message": "x"}
    )

    async def running_again() -> None:
        types = [e["type"] for e in await events_of(timers_stack, "retry-2")]
        assert types[-1] == "WORKFLOW_EXECUTION_RETRY_STARTED", types

    await assert_eventually(running_again, timeout=30, interval=0.1)
    await report(timers_stack, "CompleteExecution", "retry-2", run_id=started["run_id"], result=1)
    async with httpx.AsyncClient(base_url=timers_stack.api_url, headers=AUTH) as http:

        async def completed() -> None:
            got = await http.get("/v1/workflows/executions/retry-2")
            assert got.json()["status"] == "COMPLETED", got.text

        await assert_eventually(completed, timeout=30, interval=0.1)


async def test_timer_of_a_closed_run_never_fires(timers_stack: Stack) -> None:
    started = await execute(timers_stack, "closed-1", execution_timeout_seconds=1.5)
    await report(timers_stack, "CompleteExecution", "closed-1", run_id=started["run_id"], result=1)

    async def completed() -> None:
        types = [e["type"] for e in await events_of(timers_stack, "closed-1")]
        assert types[-1] == "WORKFLOW_EXECUTION_COMPLETED", types

    await assert_eventually(completed, timeout=30)
    # A later execution's timeout, due after closed-1's, fires: so had closed-1's timer
    # been kept, it would have fired by then.
    await execute(timers_stack, "closed-probe", execution_timeout_seconds=2.5)

    async def probe_timed_out() -> None:
        types = [e["type"] for e in await events_of(timers_stack, "closed-probe")]
        assert types[-1] == "WORKFLOW_EXECUTION_TIMED_OUT", types

    await assert_eventually(probe_timed_out, timeout=30, interval=0.1)
    env = timers_stack.env
    records = await read_topic(
        env["RUNSTORE_KAFKA_BOOTSTRAP"],
        topic(env, "commands"),
        until=lambda rs: any(
            b"closed-probe" in r.value and b"TimeOutExecution" in r.value for r in rs
        ),
    )
    fired = [json.loads(r.value) for r in records if r.key == b"closed-1"]
    assert [c["type"] for c in fired if c["type"] == "TimeOutExecution"] == []
    assert (await events_of(timers_stack, "closed-1"))[-1]["type"] == (
        "WORKFLOW_EXECUTION_COMPLETED"
    )


async def test_bad_extensions_are_refused(timers_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=timers_stack.api_url, headers=AUTH) as http:
        answer = await http.post(
            "/v1/workflows/wf/execute",
            json={"extensions": {"execution_timeout_seconds": -1}},
        )
    assert answer.status_code == 422, answer.text
    assert "execution_timeout_seconds" in answer.text


def test_after_downtime_a_schedule_catches_up_only_within_its_window(timers_stack: Stack) -> None:
    from mistralai.client import Mistral

    from tests.support.eventually import wait_until

    client = Mistral(api_key="test-key", server_url=timers_stack.api_url)
    schedule_id = "catch-up"
    client.workflows.schedules.schedule_workflow(
        workflow_identifier="wf",
        schedule_id=schedule_id,
        schedule={
            "input": {},
            "intervals": [{"every": "1s"}],
            "policy": {"overlap": 6, "catchup_window_seconds": 8},
        },
    )

    def runs() -> list[Any]:
        page = client.workflows.runs.list_runs(search_key=[f"schedule_id==:{schedule_id}"])
        rows: list[Any] = list(page.result.executions)
        while (page := page.next()) is not None:
            rows += page.result.executions
        return rows

    def started() -> None:
        assert runs(), "no run yet"

    wait_until(started, timeout=30)
    timers_stack.stop("timers")
    stopped_at = time.time()
    time.sleep(12)  # the downtime itself: no timer or schedule is evaluated meanwhile
    back_at = time.time()
    timers_stack.start("timers")

    def caught_up() -> list[float]:
        times = sorted(_scheduled_at(r.execution_id, schedule_id) for r in runs())
        assert times[-1] > back_at, "not evaluated since the restart yet"
        return times

    times = wait_until(caught_up, timeout=60, interval=0.2)
    client.workflows.schedules.unschedule_workflow(schedule_id=schedule_id)
    missed = [t for t in times if stopped_at + 1 < t < back_at]
    # Times of the downtime older than the window when the service came back were skipped;
    # the newer ones were started late.
    assert all(t >= back_at - 8 for t in missed), (stopped_at, back_at, missed)
    assert missed, (stopped_at, back_at, times)


def _scheduled_at(execution_id: str, schedule_id: str) -> float:
    stamp = execution_id.removeprefix(f"{schedule_id}-")
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()


async def test_a_workflow_sleep_fires_once_and_a_canceled_timer_never_fires(
    timers_stack: Stack,
) -> None:
    started = await execute(timers_stack, "sleeper")
    run_id = started["run_id"]
    task = command(
        "CompleteWorkflowTask",
        "sleeper",
        run_id=run_id,
        task_seq=1,
        steps=[
            {"kind": "start_timer", "timer_id": "nap", "duration_seconds": 1},
            {"kind": "start_timer", "timer_id": "never", "duration_seconds": 1.5},
            {"kind": "cancel_timer", "timer_id": "never"},
        ],
    )
    env = timers_stack.env
    await produce(env["RUNSTORE_KAFKA_BOOTSTRAP"], topic(env, "commands"), [("sleeper", task)])

    async def nap_fired() -> list[dict[str, Any]]:
        events = await events_of(timers_stack, "sleeper")
        assert "TIMER_FIRED" in [e["type"] for e in events], [e["type"] for e in events]
        return events

    events = await assert_eventually(nap_fired, timeout=30, interval=0.1)
    (nap,) = [
        e for e in events if e["type"] == "TIMER_STARTED" and e["attributes"]["timer_id"] == "nap"
    ]
    (fired,) = [e for e in events if e["type"] == "TIMER_FIRED"]
    assert fired["attributes"]["timer_id"] == "nap"
    assert fired["timestamp_ns"] >= nap["attributes"]["fire_at_ns"]
    assert fired["command_id"] == f"timer:sleeper:{run_id}:nap:{nap['attributes']['fire_at_ns']}"
    # A later timeout probe fires after "never" would have: "never" stayed canceled.
    await execute(timers_stack, "sleeper-probe", execution_timeout_seconds=2)

    async def probe_timed_out() -> None:
        types = [e["type"] for e in await events_of(timers_stack, "sleeper-probe")]
        assert types[-1] == "WORKFLOW_EXECUTION_TIMED_OUT", types

    await assert_eventually(probe_timed_out, timeout=30, interval=0.1)
    fired_ids = [
        e["attributes"]["timer_id"]
        for e in await events_of(timers_stack, "sleeper")
        if e["type"] == "TIMER_FIRED"
    ]
    assert fired_ids == ["nap"]


async def _timers_get(stack: Stack, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{stack.probe_url('timers')}{path}")


async def _timers_metric(stack: Stack, name: str) -> float:
    text = (await _timers_get(stack, "/metrics")).text
    samples = [line.split()[-1] for line in text.splitlines() if line.startswith(f"{name} ")]
    assert samples, f"{name} not exposed"
    return float(samples[0])


async def test_timers_probes_and_metrics_show_pending_and_lateness(timers_stack: Stack) -> None:
    assert (await _timers_get(timers_stack, "/healthz")).json() == {"status": "ok"}

    async def ready() -> None:
        reply = await _timers_get(timers_stack, "/readyz")
        assert reply.status_code == 200, reply.text
        assert reply.json()["checks"] == {"mongodb": "ok", "kafka": "ok", "consumer": "ok"}

    await assert_eventually(ready, timeout=30)
    fired_before = await _timers_metric(timers_stack, "runstore_timer_lateness_seconds_count")
    await execute(timers_stack, "to-metrics", execution_timeout_seconds=600)

    async def pending() -> float:
        held = await _timers_metric(timers_stack, "runstore_timers_pending")
        assert held >= 1
        return held

    held = await assert_eventually(pending, timeout=30)
    await execute(timers_stack, "to-metrics-2", execution_timeout_seconds=1)

    async def fired() -> None:
        count = await _timers_metric(timers_stack, "runstore_timer_lateness_seconds_count")
        assert count >= fired_before + 1

    await assert_eventually(fired, timeout=30)
    # The 600 s deadline leaves the gauge when its run closes (it is dropped, not fired).
    async with httpx.AsyncClient(base_url=timers_stack.api_url, headers=AUTH) as http:
        ended = await http.post("/v1/workflows/executions/to-metrics/terminate")
        assert ended.status_code < 300, ended.text

    async def dropped() -> None:
        assert await _timers_metric(timers_stack, "runstore_timers_pending") < held

    await assert_eventually(dropped, timeout=30)
    # Its consumer reports batches and lag per partition, like the engine's.
    text = (await _timers_get(timers_stack, "/metrics")).text
    assert 'runstore_consumer_lag{group="timers",' in text
    batches = [ln for ln in text.splitlines() if ln.startswith("runstore_batch_size_count")]
    assert any('service="timers"' in ln and float(ln.split()[-1]) >= 1 for ln in batches), batches
    # `make status` reads the same probes.
    port = int(timers_stack.probe_url("timers").rsplit(":", 1)[1])
    line = service_line("timers", port)
    assert line.split()[:2] == ["timers", "ready"] and " lag " in line, line


async def test_the_timers_commit_their_offsets_when_the_events_stop(timers_stack: Stack) -> None:
    """Offsets are committed at most every RUNSTORE_TIMERS_COMMIT_EVERY_MS, not after each
    batch: what the last batches before a quiet spell left pending is committed too."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    env = timers_stack.env
    for n in range(5):
        await execute(timers_stack, f"offsets-{n}")
    events = topic(env, "events")
    boot = env["RUNSTORE_KAFKA_BOOTSTRAP"]
    probe = AIOKafkaConsumer(bootstrap_servers=boot)
    await probe.start()
    try:
        parts = await partitions_of_topic(probe, events)
        ends = await probe.end_offsets([TopicPartition(events, p) for p in parts])
    finally:
        await probe.stop()
    written = {tp.partition: o for tp, o in ends.items() if o > 0}
    assert written, "the starts wrote no events"

    async def committed() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=boot)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(f"{env['RUNSTORE_TOPIC_PREFIX']}timers")
        finally:
            await admin.close()
        at = {tp.partition: m.offset for tp, m in found.items() if tp.topic == events}
        assert all(at.get(p, -1) >= o for p, o in written.items()), (at, written)

    await assert_eventually(committed, timeout=30, interval=0.2)


async def partitions_of_topic(consumer: Any, name: str) -> set[int]:
    """The partitions of topic `name`, from the cluster's metadata."""
    cluster = await consumer._client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(name) or ())
