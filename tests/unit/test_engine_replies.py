"""The engine's side of the direct reply channel (services/engine/replies.py): only allowed
IP literals, frames queued while connecting and dropped when the connection is down or
its buffer is full, never waiting for the API. Real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.commands import Command
from schemas.commits import Commit
from schemas.common import ExecutionStatus
from schemas.events import EVENT_ADAPTER, EventType
from schemas.outcomes import CommandOutcome
from services.common.metrics import ENGINE_REPLIES
from services.common.reply_frames import (
    MAGIC,
    MAGIC_TAGGED,
    OUTCOME,
    REPLY_HEADER,
    STARTED,
    STARTED_HEADER,
    ReplyAddress,
    address_value,
    take_frames,
    take_hello,
)
from services.common.settings import Topics
from services.engine.app import outgoing_records
from services.engine.outbound import Outbound
from services.engine.replies import (
    FRAME_STARTED_BYTES,
    MAX_STARTED_BYTES,
    ReplySender,
    Routes,
    _Link,
    networks,
)
from services.engine.validation import InboundRecord
from tests.support.domain import start as domain_start
from tests.support.servers import free_port
from tests.support.workloads import Workload

WAIT_S = 5.0  # a guard against a hang, not a timed assertion
LOOPBACK = networks(["127.0.0.0/8", "::1/128"])
TOPICS = Topics.with_prefix("")


def outcome(command_id: str, execution_id: str) -> CommandOutcome:
    return CommandOutcome(
        command_id=command_id,
        command_type="StartWorkflow",
        execution_id=execution_id,
        accepted=True,
        seq=1,
        run_id="r",
        status=ExecutionStatus.RUNNING,
        decided_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


NO_HEADER = object()


def rec(
    execution_id: str, reply: str | bytes | object | None, command_id: str
) -> tuple[InboundRecord, Command]:
    """A parsed command's record, with `reply` as its reply header's value (a null value
    with None; no header with NO_HEADER)."""
    headers: tuple[tuple[str, Any], ...] = ()
    if reply is not NO_HEADER:
        value = reply.encode() if isinstance(reply, str) else reply
        headers = (("traceparent", b"00-x"), (REPLY_HEADER, value))
    command = domain_start(execution_id).model_copy(update={"command_id": command_id})
    return InboundRecord(0, 0, execution_id.encode(), b"{}", headers), command


def counted(result: str) -> float:
    return ENGINE_REPLIES.labels(result)._value.get()  # type: ignore[attr-defined,no-any-return]


class Api:
    """A loopback listener that collects the tokens and values it is sent."""

    def __init__(self) -> None:
        self.tokens: list[bytes] = []
        self.magics: list[bytes] = []
        self.values: list[bytes] = []
        self.got = asyncio.Condition()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        token = None
        while data := await reader.read(65536):
            buffer += data
            if token is None:
                magic = bytes(buffer[:4])
                token = take_hello(buffer)
                if token is None:
                    continue
                self.tokens.append(token)
                self.magics.append(magic)
            values = take_frames(buffer, 1 << 20)
            async with self.got:
                self.values.extend(values)
                self.got.notify_all()
        writer.close()

    async def wait_for(self, n: int) -> list[bytes]:
        async with self.got:
            await asyncio.wait_for(self.got.wait_for(lambda: len(self.values) >= n), WAIT_S)
        return self.values


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, int]]:
    listener = Api()
    listener.server = await asyncio.start_server(listener.handle, "127.0.0.1", 0)
    port = listener.server.sockets[0].getsockname()[1]
    yield listener, port
    listener.server.close()


def _sender_to(port: int) -> tuple[ReplySender, str]:
    """A sender, and the reply header naming the test's listener at `port` (token `tok`)."""
    return ReplySender(LOOPBACK), address_value("127.0.0.1", port, "tok")


async def test_outcomes_go_to_their_address_as_the_topic_values(api: tuple[Api, int]) -> None:
    listener, port = api
    sender, header = _sender_to(port)
    routes = sender.routes(
        [rec("e1", header, "c1"), rec("e2", NO_HEADER, "c2"), rec("e3", header, "c3")]
    )
    assert routes is not None
    outcomes = [outcome("c1", "e1"), outcome("c2", "e2"), outcome("c3", "e3")]
    sent = counted("sent")
    # Queued while the connection opens: send never waits for it.
    sender.send(routes, outcomes)
    values = await listener.wait_for(2)
    assert listener.tokens == [b"tok"]
    assert values == [o.model_dump_json().encode() for o in (outcomes[0], outcomes[2])]
    assert counted("sent") == sent + 2
    again = sender.routes([rec("e1", header, "c4")])
    assert again is not None
    sender.send(again, [outcome("c4", "e1")])  # the same connection, open now
    await listener.wait_for(3)
    assert listener.tokens == [b"tok"]
    assert sender.connections == 1
    await sender.close()


def _asking_routes(sender: ReplySender, header: str, commits: Sequence[Commit]) -> Routes | None:
    """The routes of commands (one per commit, by its command id) whose records carry the
    reply header `header` and ask for STARTED events."""
    asking = ((STARTED_HEADER, b"1"), (REPLY_HEADER, header.encode()))
    return sender.routes(
        [
            (
                InboundRecord(0, n, b"e", b"{}", asking),
                domain_start("e").model_copy(update={"command_id": c.command_id}),
            )
            for n, c in enumerate(commits)
        ]
    )


async def test_an_address_that_takes_started_events_gets_them_tagged_before_the_outcome(
    api: tuple[Api, int],
) -> None:
    listener, port = api
    sender, header = _sender_to(port)
    w = Workload()
    opened = w.start("e1")
    signalled = w.signal("e1")  # a commit that opens no run
    big = w.start("e2", input={"blob": "x" * MAX_STARTED_BYTES})  # left to the topic
    routes = _asking_routes(sender, header, [opened, signalled, big])
    assert routes is not None and all(a.started for a in routes.values())
    outcomes = [outcome(c.command_id, c.execution_id) for c in (opened, signalled, big)]
    sent = counted("sent")
    sender.send(routes, outcomes, [opened, signalled, big])
    values = await listener.wait_for(4)
    assert listener.magics == [MAGIC_TAGGED]
    (started,) = [e for e in opened.events if e.type is EventType.WORKFLOW_EXECUTION_STARTED]
    encode = [o.model_dump_json().encode() for o in outcomes]
    assert values == [
        STARTED + started.__pydantic_serializer__.to_json(started),  # as on the events topic
        OUTCOME + encode[0],
        OUTCOME + encode[1],
        OUTCOME + encode[2],
    ]
    assert EVENT_ADAPTER.validate_json(values[0][1:]) == started
    assert counted("sent") == sent + 3  # outcomes
    await sender.close()


async def test_the_records_published_after_the_replies_carry_the_same_bytes_encoded_once(
    api: tuple[Api, int],
) -> None:
    # The reply's STARTED event and outcomes are encoded once: the batch's records reuse
    # that JSON (`Outbound.encoded`), byte for byte what they would encode themselves.
    listener, port = api
    sender, header = _sender_to(port)
    w = Workload()
    opened, signalled, unasked = w.start("e1"), w.signal("e1"), w.start("e2")
    routes = _asking_routes(sender, header, [opened, signalled])
    assert routes is not None
    out = Outbound(
        commits=[opened, signalled, unasked],
        outcomes=[outcome(c.command_id, c.execution_id) for c in (opened, signalled, unasked)],
    )
    sender.send(routes, out.outcomes, out.commits, out.encoded)
    await listener.wait_for(3)
    records = list(outgoing_records(out, TOPICS))
    fresh = list(outgoing_records(replace(out, encoded={}), TOPICS))
    assert [r.value for r in records] == [r.value for r in fresh]
    started = opened.events[0]
    reused = {id(started), id(out.outcomes[0]), id(out.outcomes[1])}
    assert out.encoded.keys() == reused  # not the unasked start's, nor the signal's event
    by_value = {r.value: r for r in records}
    for key in reused:
        # The very bytes object the replies made, not an equal one made again.
        assert any(r.value is out.encoded[key] for r in by_value.values())
    await sender.close()


async def test_started_events_past_a_frames_budget_are_left_to_the_topic(
    api: tuple[Api, int],
) -> None:
    # Each STARTED fits alone (under MAX_STARTED_BYTES), but a frame carries at most
    # FRAME_STARTED_BYTES of them: the rest of the batch's starts are answered by their
    # outcome alone (their STARTED comes by the topic).
    listener, port = api
    sender, header = _sender_to(port)
    w = Workload()
    blob = "x" * (MAX_STARTED_BYTES - 4096)
    starts = [w.start(f"e{n}", input={"blob": blob}) for n in range(6)]
    routes = _asking_routes(sender, header, starts)
    assert routes is not None
    outcomes = [outcome(c.command_id, c.execution_id) for c in starts]
    sender.send(routes, outcomes, starts)
    fit = FRAME_STARTED_BYTES // (MAX_STARTED_BYTES - 4096 + 1024)
    assert 0 < fit < len(starts)  # (the test's sizes exercise the budget)
    values = await listener.wait_for(len(starts) + fit)
    kinds = [v[:1] for v in values]
    assert kinds.count(STARTED) == fit
    assert kinds.count(OUTCOME) == len(starts)
    assert sum(len(v) - 1 for v in values if v[:1] == STARTED) <= FRAME_STARTED_BYTES
    await sender.close()


async def test_an_address_that_does_not_ask_gets_plain_outcomes_only(api: tuple[Api, int]) -> None:
    listener, port = api
    sender = ReplySender(LOOPBACK)
    w = Workload()
    opened = w.start("e1")
    routes = sender.routes([rec("e1", address_value("127.0.0.1", port, "tok"), opened.command_id)])
    assert routes is not None
    sender.send(routes, [outcome(opened.command_id, "e1")], [opened])
    values = await listener.wait_for(1)
    assert listener.magics == [MAGIC]
    assert values == [outcome(opened.command_id, "e1").model_dump_json().encode()]
    await sender.close()


def test_addresses_outside_the_allowed_networks_or_not_ip_literals_are_refused() -> None:
    sender = ReplySender(networks(["10.0.0.0/8"]))
    refused = counted("refused")
    records = [
        rec("e1", address_value("127.0.0.1", 4000, "t"), "c1"),
        rec("e2", address_value("192.168.1.1", 4000, "t"), "c2"),
        rec("e3", b"localhost:4000/t", "c3"),
    ]
    assert sender.routes(records) is None
    assert counted("refused") == refused + 3
    routes = sender.routes([rec("e4", address_value("10.2.3.4", 4000, "t"), "c4")])
    assert routes is not None and routes["c4"].host == "10.2.3.4"
    assert ReplySender([]).enabled is False


async def test_frames_are_dropped_while_the_address_is_down() -> None:
    sender = ReplySender(LOOPBACK, retry_s=3600)
    address = address_value("127.0.0.1", free_port(), "t")
    routes = sender.routes([rec("e1", address, "c1"), rec("e1", address, "c2")])
    assert routes is not None
    dropped = counted("dropped")
    sender.send(routes, [outcome("c1", "e1")])  # queued while connecting, then refused
    link = next(iter(sender._links.values()))
    assert link.connecting is not None
    await asyncio.wait_for(asyncio.wait({link.connecting}), WAIT_S)
    assert counted("dropped") == dropped + 1
    sender.send(routes, [outcome("c2", "e1")])  # down: dropped at once, no new attempt
    assert link.connecting is None
    assert counted("dropped") == dropped + 2
    await sender.close()


class FullTransport(asyncio.Transport):
    def __init__(self, buffered: int) -> None:
        super().__init__()
        self.buffered = buffered
        self.written: list[bytes] = []

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def test_a_connection_over_its_buffer_limit_drops_frames_and_the_queue_is_bounded() -> None:
    address = ReplyAddress(LOOPBACK[0].network_address, 1, b"t")
    link = _Link(address, max_queued=2, buffer_bytes=100)
    link.connecting = object()  # type: ignore[assignment]
    sent, dropped = counted("sent"), counted("dropped")
    link.send(b"1", 1)
    link.send(b"2", 2)
    link.send(b"3", 4)  # the queue is full
    assert (counted("sent"), counted("dropped")) == (sent, dropped + 4)
    transport = FullTransport(buffered=0)
    link.connection_made(transport)
    assert transport.written[1:] == [b"1", b"2"]  # after the hello
    assert counted("sent") == sent + 3
    link.send(b"4", 1)
    transport.buffered = 101
    link.send(b"5", 1)
    assert transport.written[-1] == b"4"
    assert (counted("sent"), counted("dropped")) == (sent + 4, dropped + 5)


async def test_the_least_recently_used_connection_goes_beyond_the_limit(
    api: tuple[Api, int],
) -> None:
    listener, port = api
    sender = ReplySender(LOOPBACK, max_links=1)
    first = sender.routes([rec("e1", address_value("127.0.0.1", port, "a"), "c1")])
    second = sender.routes([rec("e1", address_value("127.0.0.1", port, "b"), "c2")])
    assert first is not None and second is not None
    sender.send(first, [outcome("c1", "e1")])
    await listener.wait_for(1)
    sender.send(second, [outcome("c2", "e1")])
    await listener.wait_for(2)
    assert [a.token for a in sender._links] == [b"b"]
    assert listener.tokens == [b"a", b"b"]
    await sender.close()


def test_only_the_command_that_named_an_address_is_answered_there() -> None:
    # Another command of the same execution (another producer's, a worker's) is not sent
    # to the address a command of that execution named.
    sender = ReplySender(LOOPBACK)
    routes = sender.routes(
        [rec("e1", address_value("127.0.0.1", 4000, "t"), "c1"), rec("e1", NO_HEADER, "c2")]
    )
    assert routes is not None and set(routes) == {"c1"}


@pytest.mark.parametrize(
    "value",
    [
        None,  # Kafka allows null header values
        b"127.0.0.1:4000/t\r\nFLUSHALL",  # a token that is not one the API draws
        b"127.0.0.1:4000/" + b"a" * 200,  # longer than any address
        "127.0.0.1:4000/t".encode("utf-16"),
    ],
)
def test_header_values_that_are_not_addresses_are_refused_without_raising(value: Any) -> None:
    sender = ReplySender(LOOPBACK)
    refused = counted("refused")
    assert sender.routes([rec("e1", value, "c1")]) is None
    assert counted("refused") == refused + 1
