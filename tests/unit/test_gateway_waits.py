"""The command gateway's waits (services/api/gateway.py): a send's publish and its wait for
the engine's outcome end in OutcomeTimeout when their time is up, concurrent sends of one
command share the outcome, and a cancelled send ends the sends that shared its wait as a
timeout (not as a cancellation of theirs). The window's publish is a fake here: its own
deadline is tested on the real broker (tests/integration/test_command_window.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from schemas.outcomes import CommandOutcome
from services.api.gateway import CommandGateway, OutcomeTimeout
from services.api.topic_tail import TopicFeed
from services.common.kafka_io import Outgoing
from services.common.settings import ApiSettings
from tests.support.outcomes import accepted, start_command


class FakeWindow:
    """Acknowledges every record at once, or never (`hold`), honouring `within_seconds`."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.records: list[Outgoing] = []

    async def publish(
        self, records: Sequence[Outgoing], within_seconds: float | None = None
    ) -> None:
        self.records.extend(records)
        if self.hold:
            await asyncio.sleep(within_seconds or 3600)
            raise TimeoutError


def gateway(hold: bool = False, timeout: float = 0.2) -> tuple[CommandGateway, FakeWindow]:
    settings = ApiSettings(api_command_timeout_seconds=timeout)
    feed = TopicFeed(settings, "test")
    gw = CommandGateway(settings, feed)
    window = FakeWindow(hold)
    gw._publisher = window  # type: ignore[assignment]
    return gw, window


def answer(gw: CommandGateway, outcome: CommandOutcome) -> None:
    """What the outcome feed does when the engine's outcome comes."""
    record: Any = type("Record", (), {"value": outcome.model_dump_json().encode()})()
    gw._resolve(0, [record])


async def test_a_send_returns_the_engines_outcome() -> None:
    gw, window = gateway()
    command = start_command()
    sent = asyncio.create_task(gw.send(command))
    await asyncio.sleep(0.01)
    answer(gw, accepted(command))
    assert (await sent).run_id == "r-1"
    assert [r.key for r in window.records] == ["e-1"]
    assert gw._waiting == {}


async def test_no_outcome_in_time_is_an_outcome_timeout_and_the_wait_is_forgotten() -> None:
    gw, _ = gateway()
    with pytest.raises(OutcomeTimeout, match="the engine did not answer"):
        await gw.send(start_command(), wait_seconds=0.05)
    assert gw._waiting == {}


async def test_no_acknowledgement_in_time_is_an_outcome_timeout() -> None:
    gw, _ = gateway(hold=True, timeout=0.05)
    with pytest.raises(OutcomeTimeout, match="Kafka did not acknowledge"):
        await gw.send(start_command())
    assert gw._waiting == {}


async def test_concurrent_sends_of_one_command_share_its_outcome() -> None:
    gw, _ = gateway(timeout=5)
    command = start_command()
    first = asyncio.create_task(gw.send(command))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(gw.send(command))
    await asyncio.sleep(0.01)
    answer(gw, accepted(command))
    assert (await first).run_id == (await second).run_id == "r-1"


async def test_a_send_sharing_a_wait_that_times_out_first_leaves_the_owner_waiting() -> None:
    gw, _ = gateway(timeout=5)
    command = start_command()
    owner = asyncio.create_task(gw.send(command))
    await asyncio.sleep(0.01)
    with pytest.raises(OutcomeTimeout):
        await gw.send(command, wait_seconds=0.05)
    answer(gw, accepted(command))
    assert (await owner).run_id == "r-1"


async def test_a_cancelled_send_ends_the_sends_sharing_its_wait_as_a_timeout() -> None:
    """The cancelled request raises CancelledError; the one that shared its wait is not
    cancelled (its request goes on and is answered 504), and learns it at once rather
    than at its own deadline (the outcome could no longer reach it)."""
    gw, _ = gateway(timeout=60)
    command = start_command()
    owner = asyncio.create_task(gw.send(command))
    await asyncio.sleep(0.01)
    other = asyncio.create_task(gw.send(command))
    await asyncio.sleep(0.01)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    async with asyncio.timeout(5):
        with pytest.raises(OutcomeTimeout):
            await other
    assert gw._waiting == {}


async def test_an_owners_timeout_ends_the_sends_sharing_its_wait() -> None:
    gw, _ = gateway(timeout=60)
    command = start_command()
    owner = asyncio.create_task(gw.send(command, wait_seconds=0.05))
    await asyncio.sleep(0.01)
    other = asyncio.create_task(gw.send(command))
    with pytest.raises(OutcomeTimeout):
        await owner
    async with asyncio.timeout(5):
        with pytest.raises(OutcomeTimeout):
            await other


def record_of(value: bytes) -> Any:
    return type("Record", (), {"value": value})()


async def test_an_outcome_nobody_here_awaits_is_not_decoded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Read by its leading command id and dropped: a record that would not even decode
    is not looked at (a decoded one is logged as unreadable)."""
    gw, _ = gateway()
    gw._resolve(0, [record_of(b'{"command_id":"not-awaited", broken')])
    assert "unreadable" not in caplog.text
    gw._waiting["awaited"] = asyncio.get_running_loop().create_future()
    gw._resolve(0, [record_of(b'{"command_id":"awaited", broken')])
    assert "unreadable CommandOutcome record ignored" in caplog.text
    gw._waiting["awaited"].cancel()


async def test_an_outcome_whose_command_id_has_an_escape_still_reaches_its_waiter() -> None:
    gw, _ = gateway()
    command = start_command('c-"quoted"\\id')
    sent = asyncio.create_task(gw.send(command))
    await asyncio.sleep(0.01)
    answer(gw, accepted(command))
    assert (await sent).command_id == 'c-"quoted"\\id'
