"""free_port never gives one process the same port twice: a test stack draws its API port and
four probe ports before any service binds one, and the kernel may offer a just-released port
again (a CI run once put the engine's probe server on the API's port)."""

from __future__ import annotations

import socket
import sys
import types
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
    # infra's own view of the socket module only: other threads keep the real sockets.
    fake = types.SimpleNamespace(
        socket=_Offered, AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM
    )
    monkeypatch.setattr(infra, "socket", fake)
    monkeypatch.setattr(infra, "_HANDED_OUT", set())
    _Offered.ports = [40001, 40001, 40002, 40001, 40002, 40003]
    assert [infra.free_port(), infra.free_port(), infra.free_port()] == [40001, 40002, 40003]
    assert _Offered.ports == []


def test_the_tests_and_deploy_scripts_share_one_infra_module() -> None:
    """`import infra` (deploy/local's scripts, some tests) and `local_script("infra")` are the
    same module, so there is one memory of the ports given out."""
    assert sys.modules["infra"] is infra
    assert local_script("infra") is infra
    port = free_port()
    assert port in infra._HANDED_OUT
