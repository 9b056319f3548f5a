"""What "exactly once" means after crashes, as checks shared by the kill tests.

A workload of commands is compared with what one engine that never crashes decides
(`reference`): the store must hold exactly the reference commits with contiguous seqs,
every command must have the reference's outcome, every stored event must have been
published, nothing valid dead-lettered; and the read models must equal a rebuild.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from itertools import count
from typing import Any

from aiokafka import ConsumerRecord
from pymongo import AsyncMongoClient

from services.common.commit_log import commit_from_doc, commit_to_doc
from services.common.kafka_topics import ensure_topics
from services.common.readmodels.store import READ_MODELS
from services.common.settings import RunstoreSettings
from services.engine.memory_event_store import MemoryEventStore
from services.engine.processor import CommandProcessor, InboundRecord, StateCache
from tests.support.kafka import command, produce, read_topic

Doc = dict[str, Any]


def workload(rng: random.Random, executions: int, prefix: str = "crash") -> list[dict[str, Any]]:
    """Per execution: start, signals, maybe cancel/terminate and a restart; some re-sends."""
    per_execution: list[list[dict[str, Any]]] = []
    for n in range(executions):
        eid = f"{prefix}-{n}"
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
    store = MemoryEventStore()
    clock = count(1_700_000_000_000_000_000, 1_000_000)
    processor = CommandProcessor(store, StateCache(10_000), lambda: next(clock))
    records = [
        # One partition is enough: only per-execution order matters.
        InboundRecord(
            partition=0, offset=i, key=c["execution_id"].encode(), value=json.dumps(c).encode()
        )
        for i, c in enumerate(commands)
    ]
    out = await processor.process(records)
    outcomes = {o.command_id: (o.accepted, o.code, o.seq) for o in out.outcomes}
    streams = {
        e: [c.command_id async for c in store.read_stream(e)]
        for e in {c["execution_id"] for c in commands}
    }
    return streams, outcomes


async def create_topics(env: dict[str, str]) -> None:
    """The topics `env` names, created now: a producer that starts before the services
    would otherwise race their creation (and fail on a slow machine)."""
    await ensure_topics(
        RunstoreSettings(
            kafka_bootstrap=env["RUNSTORE_KAFKA_BOOTSTRAP"],
            topic_prefix=env["RUNSTORE_TOPIC_PREFIX"],
            partitions=int(env.get("RUNSTORE_PARTITIONS", "12")),
        )
    )


async def produce_paced(
    env: dict[str, str],
    commands: list[dict[str, Any]],
    rng: random.Random,
    chunk: int,
    pause: tuple[float, float],
) -> None:
    """Send `commands` in order to the commands topic, `chunk` at a time, with a random
    pause in `pause` between chunks: a load that lasts while processes are killed."""
    topic = f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.commands"
    for i in range(0, len(commands), chunk):
        part = commands[i : i + chunk]
        await produce(
            env["RUNSTORE_KAFKA_BOOTSTRAP"], topic, [(c["execution_id"], c) for c in part]
        )
        await asyncio.sleep(rng.uniform(*pause))


async def await_outcomes(
    env: dict[str, str], command_ids: set[str], timeout: float = 180
) -> list[ConsumerRecord[Any, Any]]:
    """Every outcome record, read until each of `command_ids` has one."""
    return await read_topic(
        env["RUNSTORE_KAFKA_BOOTSTRAP"],
        f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.outcomes",
        lambda rs: {json.loads(r.value)["command_id"] for r in rs} >= command_ids,
        timeout=timeout,
    )


async def stored_commits(env: dict[str, str]) -> dict[str, list[Doc]]:
    """Every commit in the store by execution, in seq order: as documents with the ids at
    the top level (`commit_to_doc(compact=False)`), whatever layout the engine stored."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(env["RUNSTORE_MONGO_URL"], tz_aware=True)
    try:
        stored: dict[str, list[Doc]] = defaultdict(list)
        # (Only commits: the collection holds the run locators too.)
        commits = client[env["RUNSTORE_MONGO_DATABASE"]].commits
        async for doc in commits.find({"body": {"$exists": True}}):
            whole = commit_to_doc(commit_from_doc(doc), compact=False)
            stored[whole["execution_id"]].append(whole)
    finally:
        await client.close()
    return {e: sorted(docs, key=lambda d: d["seq"]) for e, docs in stored.items()}


@dataclass(frozen=True)
class Checked:
    commits: int
    events: int
    event_records: int


async def assert_exactly_once(
    env: dict[str, str],
    commands: list[dict[str, Any]],
    outcome_records: list[ConsumerRecord[Any, Any]],
    other_executions: frozenset[str] = frozenset(),
) -> Checked:
    """The store, outcomes and events topic after `commands` are what one uninterrupted
    engine produces. `other_executions` were commanded outside `commands` (e.g. over
    HTTP): they are only checked for contiguous seqs and published events."""
    bootstrap, prefix = env["RUNSTORE_KAFKA_BOOTSTRAP"], env["RUNSTORE_TOPIC_PREFIX"]
    streams, ref_outcomes = await reference(commands)
    stored = await stored_commits(env)

    # 1. The store holds exactly the reference commits, seq contiguous, none doubled.
    for execution_id, docs in stored.items():
        assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1)), execution_id
    for execution_id, expected in streams.items():
        got = [d["command_id"] for d in stored.get(execution_id, [])]
        assert got == expected, execution_id
    assert set(stored) - other_executions == {e for e, s in streams.items() if s}

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
    assert {json.loads(r.value)["event_id"] for r in published} == commit_events

    # 4. Nothing valid was dead-lettered.
    dead = await read_topic(
        bootstrap, f"{prefix}workflows.commands.dlq", lambda rs: True, timeout=10
    )
    assert dead == []
    return Checked(sum(map(len, stored.values())), len(commit_events), len(published))


async def read_models(db: Any) -> dict[str, dict[str, Doc]]:
    return {name: {d["_id"]: d async for d in db[name].find({})} for name in READ_MODELS}


async def assert_caught_up(db: Any, models: Any) -> None:
    """Every execution's read-model pointer (in `models`) is at its newest commit (in
    `db`)."""
    newest: dict[str, int] = {}
    async for c in db.commits.find({"body": {"$exists": True}}, {"_id": 1}):  # not locators
        execution_id, _, seq = c["_id"].rpartition(":")
        newest[execution_id] = max(newest.get(execution_id, 0), int(seq))
    pointers = {d["_id"]: d["seq"] async for d in models.executions.find({})}
    assert pointers == newest


async def rebuild(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`runstore projections rebuild` on `env`'s database (the projectors must be stopped)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "projections", "rebuild"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result


async def assert_rebuild_equals(
    env: dict[str, str], models: Any, live: dict[str, dict[str, Doc]]
) -> None:
    """Rebuilt read models (in `models`, the read models' database) equal `live`,
    collection by collection."""
    await rebuild(env)
    rebuilt = await read_models(models)
    for name in READ_MODELS:
        assert rebuilt[name] == live[name], f"{name} differs after the rebuild"
