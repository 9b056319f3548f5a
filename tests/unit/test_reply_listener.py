"""The API's end of the direct reply channel (services/api/reply_listener.py) and the
gateway's use of it: a command the gateway waits for names the listener, an outcome
written there answers it, and a connection without the token resolves nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from services.api import reply_listener
from services.api.gateway import CommandGateway, reply_headers
from services.api.reply_listener import ReplyListener
from services.api.topic_tail import TopicFeed
from services.common.kafka_io import Outgoing
from services.common.metrics import API_OUTCOMES_RESOLVED, API_REPLY_CONNECTIONS
from services.common.reply_frames import (
    OUTCOME,
    REPLY_HEADER,
    STARTED,
    STARTED_HEADER,
    frame,
    hello,
    parse_address,
)
from services.common.settings import ApiSettings
from tests.support.eventually import assert_eventually
from tests.support.outcomes import accepted, start_command

WAIT_S = 5.0  # a guard against a hang, not a timed assertion


def counted(counter: object, label: str) -> float:
    return counter.labels(label)._value.get()  # type: ignore[attr-defined,no-any-return]


class Window:
    def __init__(self) -> None:
        self.records: list[Outgoing] = []
        self.published = asyncio.Event()

    async def publish(
        self, records: Sequence[Outgoing], within_seconds: float | None = None
    ) -> None:
        self.records.extend(records)
        self.published.set()


async def started_gateway(**settings: object) -> tuple[CommandGateway, Window]:
    config = ApiSettings(api_command_timeout_seconds=WAIT_S, **settings)  # type: ignore[arg-type]
    gw = CommandGateway(config, TopicFeed(config, "test"))
    window = Window()
    gw._publisher = window  # type: ignore[assignment]
    if gw.replies is not None:
        await gw.replies.start()
        assert gw.replies.header_value is not None
        gw._reply_headers = {REPLY_HEADER: gw.replies.header_value}
    return gw, window


async def test_an_outcome_written_to_the_listener_answers_the_send() -> None:
    gw, window = await started_gateway()
    assert gw.replies is not None and gw.replies.header_value is not None
    command = start_command("c-1")
    sending = asyncio.create_task(gw.send(command))
    await asyncio.wait_for(window.published.wait(), WAIT_S)
    (sent,) = window.records
    assert sent.headers is not None
    address = parse_address(sent.headers[REPLY_HEADER].encode())
    assert address is not None and address.token == gw.replies.token
    direct = counted(API_OUTCOMES_RESOLVED, "direct")
    _, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(hello(address.token) + frame([accepted(command).model_dump_json().encode()]))
    got = await asyncio.wait_for(sending, WAIT_S)
    assert got.run_id == "r-1"
    assert counted(API_OUTCOMES_RESOLVED, "direct") == direct + 1
    # The copy from the topic finds nobody waiting.
    topic = counted(API_OUTCOMES_RESOLVED, "topic")
    record = type("Record", (), {"value": accepted(command).model_dump_json().encode()})()
    gw._resolve(0, [record])
    assert counted(API_OUTCOMES_RESOLVED, "topic") == topic
    writer.close()
    await gw.replies.stop()


async def test_a_connection_with_a_wrong_token_is_closed_and_resolves_nothing() -> None:
    gw, window = await started_gateway()
    assert gw.replies is not None and gw.replies.port is not None
    command = start_command("c-2")
    sending = asyncio.create_task(gw.send(command))
    await asyncio.wait_for(window.published.wait(), WAIT_S)
    refused = counted(API_REPLY_CONNECTIONS, "refused")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.replies.port)
    wrong = b"x" * len(gw.replies.token)
    writer.write(hello(wrong) + frame([accepted(command).model_dump_json().encode()]))
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # closed by the API
    assert counted(API_REPLY_CONNECTIONS, "refused") == refused + 1
    assert not sending.done()
    sending.cancel()
    writer.close()
    await gw.replies.stop()


async def test_with_direct_replies_off_commands_carry_no_reply_header() -> None:
    gw, window = await started_gateway(api_direct_replies=False)
    assert gw.replies is None
    sending = asyncio.create_task(gw.send(start_command("c-3")))
    await asyncio.wait_for(window.published.wait(), WAIT_S)
    (sent,) = window.records
    assert not sent.headers or REPLY_HEADER not in sent.headers
    sending.cancel()


async def test_a_wildcard_bind_advertises_loopback_and_a_host_name_turns_replies_off() -> None:
    listener = ReplyListener(ApiSettings(api_reply_host="0.0.0.0"), lambda values: None)
    await listener.start()
    assert listener.header_value is not None
    assert listener.header_value.startswith("127.0.0.1:")
    await listener.stop()
    named = ReplyListener(ApiSettings(api_reply_advertise="api.local"), lambda values: None)
    await named.start()
    assert named.header_value is None
    await named.stop()


async def test_auto_advertises_an_ip_of_this_hosts_name() -> None:
    listener = ReplyListener(
        ApiSettings(api_reply_host="0.0.0.0", api_reply_advertise="auto"), lambda values: None
    )
    await listener.start()
    assert listener.header_value is not None
    address = parse_address(listener.header_value.encode())
    assert address is not None and address.port == listener.port
    await listener.stop()


def _noting_listener(seen: list[tuple[str, list[bytes]]]) -> ReplyListener:
    """A listener that notes, in order, each handover of outcomes and of STARTED events."""
    return ReplyListener(
        ApiSettings(),
        lambda values: seen.append(("outcomes", list(values))),
        lambda values: seen.append(("started", list(values))),
    )


async def _until(condition: Callable[[], bool]) -> None:
    async def check() -> None:
        assert condition()

    await assert_eventually(check, WAIT_S, 0.005)


async def test_a_connection_that_never_sends_its_token_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reply_listener, "_HELLO_S", 0.05)
    listener = ReplyListener(ApiSettings(), lambda values: None)
    await listener.start()
    assert listener.port is not None
    refused = counted(API_REPLY_CONNECTIONS, "refused")
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"RSR")  # the start of a hello, never the rest
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # closed by the API
    assert counted(API_REPLY_CONNECTIONS, "refused") == refused + 1
    writer.close()
    await listener.stop()


async def test_connections_without_their_token_yet_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reply_listener, "_MAX_UNTRUSTED", 2)
    listener = ReplyListener(ApiSettings(), lambda values: None)
    await listener.start()
    assert listener.port is not None
    writers = []
    for _ in range(2):
        _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writers.append(writer)
        await _until(lambda: len(listener._connections) == len(writers))
    reader, third = await asyncio.open_connection("127.0.0.1", listener.port)
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # refused at once
    assert len(listener._connections) == 2
    # One that sends the token no longer counts against the bound.
    writers[0].write(hello(listener.token))
    await _until(lambda: sum(1 for c in listener._connections if c._trusted) == 1)
    _, fourth = await asyncio.open_connection("127.0.0.1", listener.port)
    await _until(lambda: len(listener._connections) == 3)
    for writer in (*writers, third, fourth):
        writer.close()
    await listener.stop()


async def test_a_tagged_frames_started_events_are_handed_over_before_its_outcomes() -> None:
    seen: list[tuple[str, list[bytes]]] = []
    listener = _noting_listener(seen)
    await listener.start()
    assert listener.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(
        hello(listener.token, tagged=True)
        + frame([STARTED + b"s1", OUTCOME + b"o1", b"\x07later-kind", OUTCOME + b"o2"])
    )
    await _until(lambda: len(seen) == 2)
    assert seen == [("started", [b"s1"]), ("outcomes", [b"o1", b"o2"])]
    writer.close()
    await listener.stop()


async def test_an_older_engines_plain_frames_still_answer_an_instance_that_asks_for_started() -> (
    None
):
    seen: list[tuple[str, list[bytes]]] = []
    listener = _noting_listener(seen)
    await listener.start()
    assert listener.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(hello(listener.token) + frame([b'{"command_id":"c"}']))
    await _until(lambda: len(seen) == 1)
    assert seen == [("outcomes", [b'{"command_id":"c"}'])]
    writer.close()
    await listener.stop()


async def test_the_gateway_asks_for_started_events_only_with_somewhere_to_fold_them() -> None:
    for started, asks in ((None, False), (lambda values: None, True)):
        config = ApiSettings(api_command_timeout_seconds=WAIT_S)
        gw = CommandGateway(config, TopicFeed(config, "test"), started)
        window = Window()
        gw._publisher = window  # type: ignore[assignment]
        assert gw.replies is not None
        await gw.replies.start()
        assert gw.replies.header_value is not None
        gw._reply_headers = reply_headers(gw.replies.header_value, gw._asks_started)
        sending = asyncio.create_task(gw.send(start_command("c-s")))
        await asyncio.wait_for(window.published.wait(), WAIT_S)
        (sent,) = window.records
        assert sent.headers is not None
        assert REPLY_HEADER in sent.headers
        assert (STARTED_HEADER in sent.headers) is asks
        sending.cancel()
        await gw.replies.stop()
