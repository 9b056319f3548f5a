"""Records the Kafka records one one-activity workflow makes, for bench/api_workflow_cpu.py.

    .venv/bin/python bench/record_workflow_records.py [--out FILE]

Starts the stack `bench/workers.py` runs (Kafka, FerretDB, engine, projector, a worker of
bench/bench_workflows.py, API), runs one HTTP execute with `wait_for_result`, then reads
`workflows.outcomes` and `workflows.events` from the beginning and writes every record
(topic, key, value, headers) in offset order to the fixture, with the ids that the replay
substitutes per workflow (execution id, run id, the start's command id).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "deploy" / "local"))
sys.path.insert(0, str(REPO / "bench"))

from aiokafka import AIOKafkaConsumer  # noqa: E402
from http_gateway import KEY, runstore_stack  # noqa: E402
from loadgen import HttpConnection  # noqa: E402
from workers import ENV  # noqa: E402


async def record(url: str, bootstrap: str, prefix: str) -> dict[str, object]:
    parts = urlsplit(url)
    body = json.dumps({"input": {"n": 1}, "wait_for_result": True, "timeout_seconds": 30})
    for attempt in range(120):  # the worker joins its group first
        try:
            conn = HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80, KEY)
            status, payload = await conn.request(
                "POST", "/v1/workflows/bench-one-activity/execute", body.encode()
            )
            if status == 200 and json.loads(payload)["status"] == "COMPLETED":
                break
        except Exception:
            if attempt == 119:
                raise
        await asyncio.sleep(0.5)
    answer = json.loads(payload)
    consumer = AIOKafkaConsumer(
        f"{prefix}workflows.outcomes",
        f"{prefix}workflows.events",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records = []
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=2000)
            if not batches:
                break
            for tp, found in batches.items():
                for r in found:
                    records.append(
                        {
                            "topic": tp.topic.removeprefix(prefix),
                            "offset": r.offset,
                            "timestamp": r.timestamp,
                            "key": r.key.decode() if r.key else None,
                            "value": r.value.decode() if r.value else None,
                            "headers": [[k, v.decode()] for k, v in r.headers],
                        }
                    )
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r["timestamp"], r["topic"], r["offset"]))
    # The start's outcome: the one of the execution's first commit.
    start = next(
        json.loads(r["value"])
        for r in records
        if r["topic"] == "workflows.outcomes" and json.loads(r["value"]).get("seq") == 1
    )
    return {
        "execution_id": answer["execution_id"],
        "run_id": answer["run_id"],
        "start_command_id": start["command_id"],
        "answer": answer,
        "records": records,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "fixtures" / "one_activity_workflow.json"
    )
    args = parser.parse_args()
    services = ("engine", "projector", ("worker", "--module", "bench_workflows"), "api")
    with (
        tempfile.TemporaryDirectory(prefix="runstore-record-") as tmp,
        runstore_stack(Path(tmp), services, ENV) as (url, pids),
    ):
        # The stack's broker and topic prefix, as the API process was given them.
        environ = Path(f"/proc/{pids['api']}/environ").read_bytes().split(b"\0")
        env = dict(e.decode().partition("=")[::2] for e in environ if b"=" in e)
        found = asyncio.run(
            record(url, env["RUNSTORE_KAFKA_BOOTSTRAP"], env["RUNSTORE_TOPIC_PREFIX"])
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(found, indent=1) + "\n")
    print(f"{len(found['records'])} records written to {args.out}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
