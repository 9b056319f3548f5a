"""The engine's batch handler takes the message as its argument (`whole_message`), so that
FastStream resolves nothing per batch in a worker thread (a `KafkaMessage`-annotated
parameter is a context field that fast_depends resolves with a plain function, i.e. in
anyio's worker thread)."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import pytest
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.common.batch_subscriber import batch_subscriber
from services.common.kafka_io import batch_records
from services.common.kafka_topics import ensure_topics
from services.common.settings import EngineSettings, RunstoreSettings
from services.common.stream_service import raw_records
from services.engine.app import build_app, whole_message
from tests.support.eventually import assert_eventually


async def _consume_one_batch(
    settings: RunstoreSettings,
    monkeypatch: pytest.MonkeyPatch,
    group: str,
    decoder: Any,
    declare: Any,
) -> tuple[list[bytes], list[object]]:
    """Run a subscriber declared by `declare(subscriber, seen)` over one record; return
    the record values it saw and the functions FastStream ran in a worker thread."""
    threaded: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        threaded.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    await ensure_topics(settings)
    topic = settings.topics.commands
    broker = KafkaBroker(settings.kafka_bootstrap, logger=None)
    seen: list[bytes] = []
    declare(
        batch_subscriber(
            broker,
            topic,
            group_id=settings.group(group),
            auto_offset_reset="earliest",
            decoder=decoder,
        ),
        seen,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    await broker.start()
    try:
        await producer.send_and_wait(topic, b"one", key=b"k")

        async def arrived() -> None:
            assert b"one" in seen

        await assert_eventually(arrived, timeout=30)
    finally:
        await broker.stop()
        await producer.stop()
    return seen, threaded


async def test_the_engines_handler_gets_the_message_without_a_worker_thread(
    settings: RunstoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def declare(subscriber: Any, seen: list[bytes]) -> None:
        @subscriber
        async def handle(body: Any) -> None:  # as services/engine/app.py declares it
            seen.extend(r.value for r in batch_records(body) if r.value is not None)

    seen, threaded = await _consume_one_batch(
        settings, monkeypatch, "engine-whole", whole_message, declare
    )

    assert b"one" in seen
    assert threaded == []


async def test_a_kafka_message_parameter_is_resolved_in_a_worker_thread(
    settings: RunstoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the engine's handler avoids (and what makes the test above able to fail).
    def declare(subscriber: Any, seen: list[bytes]) -> None:
        @subscriber
        async def handle(message: KafkaMessage) -> None:
            seen.extend(r.value for r in batch_records(message) if r.value is not None)

    seen, threaded = await _consume_one_batch(
        settings, monkeypatch, "engine-context", raw_records, declare
    )

    assert b"one" in seen
    assert threaded != []


def test_the_engines_fetches_wait_as_its_settings_say() -> None:
    # The consumer's options as the engine declares them (services/engine/app.py): a
    # fetch of commands is answered at `engine_fetch_min_bytes` or after the wait.
    app = build_app(
        EngineSettings(engine_health_port=None, engine_fetch_wait_ms=7, engine_fetch_min_bytes=123)
    )
    (subscriber,) = app.broker.subscribers  # type: ignore[union-attr]
    options = subscriber._connection_args  # type: ignore[union-attr]
    assert (options["fetch_max_wait_ms"], options["fetch_min_bytes"]) == (7, 123)
    defaults = EngineSettings()
    assert (defaults.engine_fetch_wait_ms, defaults.engine_fetch_min_bytes) == (5, 64 * 1024)
