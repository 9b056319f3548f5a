"""How the engine declares its consumer of commands (services/engine/app.py): each batch's
message handed over as the handler's body (no worker-thread hop per batch; the helper's
own tests are in tests/integration/test_batch_subscriber.py), and fetches that wait as
its settings say."""

from __future__ import annotations

from services.common.batch_subscriber import (
    ResponsePacedBatchSubscriber,
    WaitingBatchSubscriber,
    message_as_body,
)
from services.common.settings import EngineSettings
from services.engine.app import build_app


def _subscriber(settings: EngineSettings) -> object:
    app = build_app(settings)
    (subscriber,) = app.broker.subscribers  # type: ignore[union-attr]
    return subscriber


def test_the_engine_gets_each_batch_as_its_message_without_a_thread_hop() -> None:
    subscriber = _subscriber(EngineSettings(engine_health_port=None))

    assert subscriber._call_options.decoder is message_as_body  # type: ignore[attr-defined]


def test_the_engines_fetches_wait_as_its_settings_say() -> None:
    # A fetch of commands is answered at `engine_fetch_min_bytes` or after the wait.
    subscriber = _subscriber(
        EngineSettings(engine_health_port=None, engine_fetch_wait_ms=7, engine_fetch_min_bytes=123)
    )

    options = subscriber._connection_args  # type: ignore[attr-defined]
    assert (options["fetch_max_wait_ms"], options["fetch_min_bytes"]) == (7, 123)
    # By default a fetch is answered at its first command (a closed loop's wave is not
    # held for more), and an idle engine's fetch waits half a second at the broker.
    defaults = EngineSettings()
    assert (defaults.engine_fetch_wait_ms, defaults.engine_fetch_min_bytes) == (500, 1)


def test_the_engine_paces_its_fetches_per_response_when_told_to() -> None:
    # Gathering stops at the first empty fetch (waves of commands in a closed loop of
    # clients); the projector, which gathers to keep workflows whole, is not paced so.
    paced = _subscriber(EngineSettings(engine_health_port=None, engine_fetch_pace_each=True))
    assert isinstance(paced, ResponsePacedBatchSubscriber)
    unpaced = _subscriber(EngineSettings(engine_health_port=None))  # the default
    assert type(unpaced) is WaitingBatchSubscriber


def test_the_rate_rule_when_set_replaces_the_pace_per_response() -> None:
    ruled = _subscriber(
        EngineSettings(
            engine_health_port=None,
            engine_fetch_pace_each=True,
            engine_fetch_gather_above_per_s=200,
        )
    )
    assert not isinstance(ruled, ResponsePacedBatchSubscriber)
    assert isinstance(ruled, WaitingBatchSubscriber)
    assert ruled.gather_above_per_s == 200  # type: ignore[attr-defined]
