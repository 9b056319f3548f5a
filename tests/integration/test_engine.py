"""The engine as a real process on real Kafka and the MongoDB-protocol server."""

from __future__ import annotations

import json

from tests.support.kafka import command, commits_of, produce, read_topic, start, topic
from tests.support.stack import Stack


async def test_bad_records_are_dead_lettered_with_reason_and_processing_continues(
    engine: Stack,
) -> None:
    env = engine.env
    garbage = b"\x00not json at all"
    unknown = json.dumps(command("LaunchRocket", "e-dlq")).encode()
    wrong_key = json.dumps(start("e-right")).encode()
    good = start("e-good", "good-1")
    await produce(
        env["RUNSTORE_KAFKA_BOOTSTRAP"],
        topic(env, "commands"),
        [("e-dlq", garbage), ("e-dlq", unknown), ("e-wrong", wrong_key), ("e-good", good)],
    )
    dead = await read_topic(
        env["RUNSTORE_KAFKA_BOOTSTRAP"], topic(env, "commands.dlq"), lambda rs: len(rs) >= 3
    )
    by_value = {r.value: dict(r.headers) for r in dead}
    assert by_value[garbage][b"x-dlq-reason".decode()] == b"invalid_json"
    assert by_value[unknown]["x-dlq-reason"] == b"unknown_type"
    assert by_value[wrong_key]["x-dlq-reason"] == b"key_mismatch"
    assert b"execution_id" in by_value[wrong_key]["x-dlq-error"]
    assert all("x-dlq-source-offset" in h for h in by_value.values())

    outcomes = await read_topic(
        env["RUNSTORE_KAFKA_BOOTSTRAP"], topic(env, "outcomes"), lambda rs: len(rs) >= 1
    )
    assert [json.loads(r.value)["command_id"] for r in outcomes] == ["good-1"]
    assert len(await commits_of(env, "e-good")) == 1


async def test_rejected_command_is_an_outcome_with_its_code_not_a_dead_letter(
    engine: Stack,
) -> None:
    env = engine.env
    await produce(
        env["RUNSTORE_KAFKA_BOOTSTRAP"],
        topic(env, "commands"),
        [("ghost", command("CancelExecution", "ghost", "cancel-ghost"))],
    )
    (outcome,) = await read_topic(
        env["RUNSTORE_KAFKA_BOOTSTRAP"], topic(env, "outcomes"), lambda rs: len(rs) >= 1
    )
    body = json.loads(outcome.value)
    assert body["accepted"] is False
    assert body["code"] == "execution_not_found"
    assert "ghost" in body["message"]


async def test_commands_of_one_execution_are_applied_in_order(engine: Stack) -> None:
    env = engine.env
    signals = [
        command("SignalExecution", "e-order", name=f"s{i}", input={"i": i}) for i in range(60)
    ]
    await produce(
        env["RUNSTORE_KAFKA_BOOTSTRAP"],
        topic(env, "commands"),
        [("e-order", start("e-order"))]
        + [("e-order", s) for s in signals]
        + [("e-order", command("CancelExecution", "e-order"))],
    )
    events = await read_topic(
        env["RUNSTORE_KAFKA_BOOTSTRAP"], topic(env, "events"), lambda rs: len(rs) >= 62
    )
    decoded = [json.loads(r.value) for r in events]
    assert [e["seq"] for e in decoded] == list(range(1, 63))
    assert [e["attributes"]["signal_name"] for e in decoded[1:61]] == [f"s{i}" for i in range(60)]
    assert decoded[-1]["type"] == "WORKFLOW_EXECUTION_CANCELED"
    assert [c["command_id"] for c in await commits_of(env, "e-order")][1:61] == [
        s["command_id"] for s in signals
    ]
