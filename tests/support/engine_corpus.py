"""A corpus of commands run through the engine's whole in-process path, and everything
that path emits, rendered line by line: the Kafka records it publishes (topic, key,
headers, value bytes) and the commits it inserts (BSON bytes of each commit, in the
whole-body layout of when the file was recorded, after a round trip through the stored
layout: see `whole_body_doc`).

tests/unit/test_engine_golden_outputs.py compares the rendering with
tests/unit/engine_outputs/golden.txt, which the engine of commit "engine: golden
outputs" recorded. A change that only makes the engine cheaper must keep every byte;
one that changes the contract on purpose re-records the file and says so.

Record (only when the file is absent): `PYTHONPATH=. .venv/bin/python -m
tests.support.engine_corpus --write`. Show the full lines: `... -m tests.support.engine_corpus`.

The corpus: the recorded histories' scenarios (tests/unit/histories/record.py: every
command type of the worker protocol, resets, continue-as-new, retries), each command a
record of its own; then a bench-like stream of starts, signals and cancels in batches
of 40 with rejections, repeats inside a batch, dead letters, a batch delivered twice and
the same batch again on a cold engine (answers read from the store).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import bson

from schemas.commands import COMMAND_ADAPTER, Command
from schemas.commits import Commit
from services.common.commit_log import commit_from_doc, commit_to_doc
from services.common.settings import Topics
from services.engine.app import outgoing_records
from services.engine.memory_event_store import MemoryEventStore
from services.engine.outbound import Outbound
from services.engine.processor import CommandProcessor, InboundRecord, StateCache
from tests.unit.histories.record import ISSUED, SCENARIOS, Recorder

GOLDEN = Path(__file__).parents[1] / "unit" / "engine_outputs" / "golden.txt"
T0 = 1_733_400_000_000_000_000
TOPICS = Topics.with_prefix("")


def render(out: Outbound, label: str) -> Iterator[str]:
    """One line per record and per commit document: a label, then the exact bytes."""
    for i, rec in enumerate(outgoing_records(out, TOPICS)):
        headers = json.dumps(rec.headers, sort_keys=False)
        yield f"{label} record {i} {rec.topic} key={rec.key} headers={headers} value={rec.value!r}"
    for commit in out.commits:
        doc = bson.encode(whole_body_doc(commit_from_doc(commit_to_doc(commit))))
        yield f"{label} commit {commit.doc_id} bson={doc.hex()}"


def whole_body_doc(commit: Commit) -> dict[str, Any]:
    """The commit document as engines stored it when golden.txt was recorded: the whole
    commit in its body. Commits are rendered so after a round trip through the stored
    layout (`commit_to_doc`, then `commit_from_doc`), which must therefore lose nothing;
    test_commit_layout.py pins that layout itself."""
    return commit_to_doc(commit, compact=False)


class _Engine:
    """The processor on an in-memory store, with a clock that ticks per reading."""

    def __init__(self, store: MemoryEventStore, clock: Iterator[int]) -> None:
        self.cache = StateCache(10_000)
        self.processor = CommandProcessor(store, self.cache, lambda: next(clock))
        self.lines: list[str] = []
        self.commits: list[Commit] = []
        self.batches = 0

    def process(self, records: list[InboundRecord]) -> Outbound:
        out = asyncio.run(self.processor.process(records))
        self.batches += 1
        self.lines.extend(render(out, f"b{self.batches}"))
        self.commits.extend(out.commits)
        return out


class _EngineRecorder(Recorder):
    """The histories' recorder, with each command going through the engine as a record."""

    def __init__(self, engine: _Engine, offsets: Iterator[int], name: str) -> None:
        super().__init__()
        self._engine = engine
        self._offsets = offsets
        self._name = name

    def apply(self, raw: dict[str, Any]) -> list[Command]:
        self.tick += 1
        raw.setdefault("issued_at", ISSUED.isoformat())
        raw.setdefault("command_id", f"{self._name}-{self.tick:04d}")  # unique across scenarios
        eid = raw["execution_id"]
        value = json.dumps(raw).encode()
        out = self._engine.process([InboundRecord(0, next(self._offsets), eid.encode(), value)])
        head = self._engine.cache.get(eid)
        if head is not None and head.state is not None:
            self.states[eid] = head.state
        return list(out.follow_ups)


def _endings(r: Recorder) -> None:
    """What the histories' scenarios leave out: a run that fails for good, one that times
    out, reports for a stale run, a child's refused start (reported to its parent)."""
    r.apply(
        {
            "type": "StartWorkflow",
            "execution_id": "fails",
            "user_id": "u",
            "payload": {"workflow_name": "w", "retry_policy": {"max_attempts": 1}},
        }
    )
    failure = {"message": "boom", "type": "ValueError", "details": {"at": [1, 2.5, None]}}
    r.apply(
        {
            "type": "FailExecution",
            "execution_id": "fails",
            "payload": {"run_id": r.run("fails"), "failure": failure},
        }
    )
    r.apply(
        {
            "type": "CompleteExecution",
            "execution_id": "fails",
            "payload": {"run_id": "stale", "result": 1},
        }
    )
    r.apply(
        {
            "type": "StartWorkflow",
            "execution_id": "slow",
            "payload": {"workflow_name": "w", "execution_timeout_seconds": 0.5},
        }
    )
    r.apply(
        {"type": "TimeOutExecution", "execution_id": "slow", "payload": {"run_id": r.run("slow")}}
    )
    child = {"workflow_name": "c", "parent_execution_id": "slow", "parent_run_id": r.run("slow")}
    r.apply({"type": "StartWorkflow", "execution_id": "fails", "payload": child})


def _bench_stream(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Starts, signals (some to closed executions) and cancels, like the bench's."""
    commands: list[dict[str, Any]] = []
    running: list[str] = []
    closed: list[str] = []
    for i in range(n):
        roll = rng.random()
        base = {"command_id": f"bench-{i:04d}", "issued_at": ISSUED.isoformat(), "user_id": "b"}
        if roll < 0.35 or not running:
            eid = f"b-{i:04d}"
            running.append(eid)
            payload: dict[str, Any] = {"workflow_name": "bench", "input": {"k": i}}
            if i % 7 == 0:
                payload["execution_timeout_seconds"] = 30
            commands.append(
                {**base, "type": "StartWorkflow", "execution_id": eid, "payload": payload}
            )
        elif roll < 0.8:
            eid = rng.choice(closed) if closed and roll > 0.75 else rng.choice(running)
            payload = {"name": "tick", "input": {"v": i, "s": "é" * (i % 3)}}
            commands.append(
                {**base, "type": "SignalExecution", "execution_id": eid, "payload": payload}
            )
        elif roll < 0.9:
            eid = running.pop(rng.randrange(len(running)))
            closed.append(eid)
            commands.append(
                {**base, "type": "CancelExecution", "execution_id": eid, "payload": {"reason": "x"}}
            )
        else:
            eid = rng.choice(running)
            commands.append(
                {**base, "type": "TerminateExecution", "execution_id": eid, "payload": {}}
            )
            running.remove(eid)
            closed.append(eid)
    return commands


def corpus_lines() -> list[str]:
    """Every line the corpus makes the engine emit, in order."""
    return _run_corpus()[0]


def corpus_commits() -> list[Commit]:
    """Every commit the corpus makes the engine publish (new and re-published), in order."""
    return _run_corpus()[1]


def _run_corpus() -> tuple[list[str], list[Commit]]:
    store = MemoryEventStore()
    clock = count(T0, 1_234_567)
    engine = _Engine(store, clock)
    offsets = count(0)
    scenarios = {**{name: s for name, (s, _) in SCENARIOS.items()}, "endings": _endings}
    for name, scenario in scenarios.items():
        scenario(_EngineRecorder(engine, offsets, name))

    stream = _bench_stream(240, random.Random(16))
    records = [
        InboundRecord(1 + i % 3, 1000 + i, c["execution_id"].encode(), json.dumps(c).encode())
        for i, c in enumerate(stream)
    ]
    batches = [records[i : i + 40] for i in range(0, len(records), 40)]
    # A command sent twice in one batch, and records that are no commands.
    batches[1] = [*batches[1], batches[1][0], batches[1][3]]
    junk = [
        InboundRecord(2, 5000, b"b-x", b"{not json"),
        InboundRecord(2, 5001, b"b-x", b""),
        InboundRecord(2, 5002, b"other", json.dumps(stream[0]).encode()),
        InboundRecord(2, 5003, b"b-x", json.dumps({**stream[0], "type": "Launch"}).encode()),
        InboundRecord(
            2,
            5004,
            b"b-x",
            json.dumps({**stream[0], "execution_id": "b-x", "payload": {}}).encode(),
        ),
    ]
    batches[2] = [*batches[2][:5], *junk, *batches[2][5:]]
    for batch in batches:
        engine.process(batch)
    # Redelivered: the last batch again (answered from the cache's sources, then the
    # store), and on a cold engine that reads every execution from the store.
    engine.process(batches[-1])
    cold = _Engine(store, clock)
    cold.batches = engine.batches
    cold.process(batches[-2])
    # Successors of the scenarios' follow-ups are in the lines; commands are parsed the
    # same way on the cold engine (a check that the corpus really ran through parsing).
    assert COMMAND_ADAPTER.validate_json(records[0].value or b"{}").command_id == "bench-0000"
    return engine.lines + cold.lines, engine.commits + cold.commits


def digest(line: str) -> str:
    """The line's label (batch, kind, position or commit id) and a hash of all of it."""
    label = " ".join(line.split(" ", 3)[:3])
    return f"{label} {hashlib.sha256(line.encode()).hexdigest()}"


def main() -> None:
    lines = corpus_lines()
    if "--write" in sys.argv:
        if GOLDEN.exists():
            print(f"kept {GOLDEN} (golden outputs are never rewritten by the recorder)")
            return
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("".join(digest(line) + "\n" for line in lines))
        print(f"recorded {len(lines)} lines in {GOLDEN}")
        return
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
