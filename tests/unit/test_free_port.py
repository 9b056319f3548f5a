"""free_port never gives one process the same port twice: a test stack draws its API port and
four probe ports before any service binds one, and the kernel may offer a just-released port
again (a CI run once put the engine's probe server on the API's port)."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

import pytest

from tests.support.servers import free_port, local_script

infra = local_script("infra")


class _Offered:
    """A socket whose bind to port 0 gets the next port of a scripted list."""

    ports: ClassVar[list[int]] = []

    def __init__(self, *args: Any) -> None:
        self.port = 0

    def __enter__(self) -> _Offered:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, address: tuple[str, int]) -> None:
        self.port = self.ports.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_the_kernel_offers_again_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infra, "_HANDED_OUT", set())
    monkeypatch.setattr(infra.socket, "socket", _Offered)
    _Offered.ports = [40001, 40001, 40002, 40001, 40002, 40003]
    assert [infra.free_port(), infra.free_port(), infra.free_port()] == [40001, 40002, 40003]
    assert _Offered.ports == []


def test_ports_drawn_together_are_distinct_and_bindable() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
