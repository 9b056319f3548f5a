"""Crash safety of the write path, proven by SIGKILL.

A producer sends a mixed workload while the engine process is killed at random moments
(at least 20 times) and restarted. Afterwards the store, the outcomes and the events
topic must be exactly what one uninterrupted engine would have produced: every command
applied once, no commit missing or doubled, every commit's events published.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.support.exactly_once import (
    assert_exactly_once,
    await_outcomes,
    create_topics,
    produce_paced,
    workload,
)
from tests.support.stack import Stack

KILLS = 20
EXECUTIONS = 150


@pytest.mark.slow
async def test_engine_killed_twenty_times_applies_every_command_exactly_once(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    rng = random.Random(20261123)
    commands = workload(rng, EXECUTIONS)
    env = {
        **isolated,
        "RUNSTORE_ENGINE_INSTANCE_ID": "engine-0",
        "RUNSTORE_ENGINE_SESSION_TIMEOUT_MS": "6000",
        "RUNSTORE_ENGINE_MAX_BATCH": "100",
    }
    await create_topics(env)
    stack = Stack(env=env, log_dir=tmp_path)
    stack.start("engine")
    try:
        started = time.monotonic()
        # Kill between 1.5 s and 4 s after a start: past start-up, into the write path.
        _, kills = await asyncio.gather(
            produce_paced(env, commands, rng, 40, (0.05, 0.25)),
            stack.kill_repeatedly("engine", KILLS, (1.5, 4.0), rng),
        )
        outcome_records = await await_outcomes(env, {c["command_id"] for c in commands})
        elapsed = time.monotonic() - started
    finally:
        stack.stop_all()
    assert kills >= KILLS
    checked = await assert_exactly_once(env, commands, outcome_records)
    print(
        f"\n{len(commands)} commands, {kills} SIGKILLs, {checked.commits} commits, "
        f"{checked.event_records} event records for {checked.events} events, {elapsed:.1f}s"
    )
