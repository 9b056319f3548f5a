"""Crash safety of the write path, proven by SIGKILL.

A producer sends a mixed workload while the engine process is killed at random moments
(at least 20 times) and restarted. Afterwards the store, the outcomes and the events
topic must be exactly what one uninterrupted engine would have produced: every command
applied once, no commit missing or doubled, every commit's events published.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.common.commit_log import commit_from_doc
from services.engine.memory_event_store import InMemoryEventStore
from services.engine.processor import CommandProcessor, InboundRecord, StateCache
from tests.support.kafka import command, produce, read_topic
from tests.support.stack import Stack

KILLS = 20
EXECUTIONS = 150


def workload(rng: random.Random) -> list[dict[str, Any]]:
    """Per execution: start, signals, maybe cancel/terminate and a restart; some re-sends."""
    per_execution: list[list[dict[str, Any]]] = []
    for n in range(EXECUTIONS):
        eid = f"crash-{n}"
        cmds = [command("StartWorkflow", eid, workflow_name="wf", input={"n": n})]
        cmds += [
            command("SignalExecution", eid, name=f"s{i}", input={"i": i})
            for i in range(rng.randint(2, 14))
        ]
        ending = rng.choice(["cancel", "terminate", "none", "restart"])
        if ending in {"cancel", "restart"}:
            cmds.append(command("CancelExecution", eid))
        if ending == "terminate":
            cmds.append(command("TerminateExecution", eid, reason="test"))
        if ending == "restart":
            cmds.append(command("StartWorkflow", eid, workflow_name="wf", input={"again": True}))
        cmds.append(command("SignalExecution", eid, name="late", input=None))  # maybe rejected
        if rng.random() < 0.3:
            cmds.append(dict(rng.choice(cmds)))  # a producer retry: same command id again
        per_execution.append(cmds)
    # Interleave executions randomly while keeping each execution's own order.
    ordered: list[dict[str, Any]] = []
    queues = [list(c) for c in per_execution]
    while queues:
        q = rng.choice(queues)
        ordered.append(q.pop(0))
        if not q:
            queues.remove(q)
    return ordered


async def reference(commands: list[dict[str, Any]]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """What an engine that never crashes decides: commit order per execution, outcomes."""
    store = InMemoryEventStore()
    clock = count(1_700_000_000_000_000_000, 1_000_000)
    processor = CommandProcessor(store, StateCache(10_000), lambda: next(clock))
    offsets: dict[str, int] = defaultdict(int)
    records = []
    for c in commands:
        # One partition per execution is enough: only per-execution order matters.
        offsets[c["execution_id"]] += 1
        records.append(
            InboundRecord(
                partition=0,
                offset=len(records),
                key=c["execution_id"].encode(),
                value=json.dumps(c).encode(),
            )
        )
    out = await processor.process(records)
    outcomes = {o.command_id: (o.accepted, o.code, o.seq) for o in out.outcomes}
    streams = {
        e: [c.command_id async for c in store.read_stream(e)]
        for e in {c["execution_id"] for c in commands}
    }
    return streams, outcomes


@pytest.mark.slow
async def test_engine_killed_twenty_times_applies_every_command_exactly_once(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(20261123)
    commands = workload(rng)
    env = {
        **isolated,
        "RUNSTORE_ENGINE_INSTANCE_ID": "engine-0",
        "RUNSTORE_ENGINE_SESSION_TIMEOUT_MS": "6000",
        "RUNSTORE_ENGINE_MAX_BATCH": "100",
    }
    bootstrap = env["RUNSTORE_KAFKA_BOOTSTRAP"]
    prefix = env["RUNSTORE_TOPIC_PREFIX"]
    stack = Stack(env=env, log_dir=tmp_path)
    stack.start("engine")
    kills = 0

    async def producer() -> None:
        for i in range(0, len(commands), 40):
            chunk = commands[i : i + 40]
            await produce(
                bootstrap, f"{prefix}workflows.commands", [(c["execution_id"], c) for c in chunk]
            )
            await asyncio.sleep(rng.uniform(0.05, 0.25))

    async def killer() -> None:
        nonlocal kills
        while kills < KILLS:
            # Kill between 1.5 s and 4 s after a start: past start-up, into the write path.
            await asyncio.sleep(rng.uniform(1.5, 4.0))
            stack.kill("engine")
            kills += 1
            stack.start("engine")

    try:
        started = time.monotonic()
        await asyncio.gather(producer(), killer())
        expected_ids = {c["command_id"] for c in commands}
        outcome_records = await read_topic(
            bootstrap,
            f"{prefix}workflows.outcomes",
            lambda rs: {json.loads(r.value)["command_id"] for r in rs} >= expected_ids,
            timeout=180,
        )
        elapsed = time.monotonic() - started
    finally:
        stack.stop_all()
    assert kills >= KILLS

    streams, ref_outcomes = await reference(commands)

    # 1. The store holds exactly the reference commits, seq contiguous, none doubled.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"])
    try:
        db = client[env["RUNSTORE_MONGO_DATABASE"]]
        stored: dict[str, list[dict[str, Any]]] = defaultdict(list)
        async for doc in db.commits.find({}):
            stored[doc["execution_id"]].append(doc)
    finally:
        await client.close()
    for execution_id, expected in streams.items():
        docs = sorted(stored.get(execution_id, []), key=lambda d: d["seq"])
        assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1)), execution_id
        assert [d["command_id"] for d in docs] == expected, execution_id
    assert set(stored) == {e for e, s in streams.items() if s}

    # 2. Every command has an outcome; repeats agree with each other and the reference.
    seen: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for r in outcome_records:
        o = json.loads(r.value)
        seen[o["command_id"]].add((o["accepted"], o["code"], o["seq"]))
    for command_id, (accepted, code, seq) in ref_outcomes.items():
        assert seen[command_id] == {(accepted, code.value if code else None, seq)}, command_id

    # 3. Every stored event reached workflows.events (duplicates allowed, gaps not).
    commit_events = {
        e.event_id for docs in stored.values() for d in docs for e in commit_from_doc(d).events
    }
    published = await read_topic(
        bootstrap,
        f"{prefix}workflows.events",
        lambda rs: {json.loads(r.value)["event_id"] for r in rs} >= commit_events,
        timeout=60,
    )
    published_ids = {json.loads(r.value)["event_id"] for r in published}
    assert published_ids == commit_events

    # 4. Nothing valid was dead-lettered.
    dead = await read_topic(
        bootstrap, f"{prefix}workflows.commands.dlq", lambda rs: True, timeout=10
    )
    assert dead == []
    print(
        f"\n{len(commands)} commands, {kills} SIGKILLs, {sum(map(len, stored.values()))} "
        f"commits, {len(published)} event records for {len(commit_events)} events, "
        f"{elapsed:.1f}s"
    )
