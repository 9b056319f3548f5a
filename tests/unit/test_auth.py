"""API keys, access rules and request limits, without servers."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from services.api.access import AccessPolicy
from services.api.auth import DEV_USER, ApiKeys, Caller
from services.api.limits import BodySizeLimit, FailureBudget
from services.common.settings import AccessMode, ApiSettings


def test_keys_name_their_users() -> None:
    keys = ApiKeys("k1=alice, k2=bob")
    assert not keys.dev_mode
    assert keys.caller("Bearer k1") == Caller("alice")
    assert keys.caller("bearer k2") == Caller("bob")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic k1", "k1", "Bearer k3"])
def test_a_missing_or_unknown_key_names_nobody(header: str | None) -> None:
    assert ApiKeys("k1=alice").caller(header) is None


def test_dev_mode_accepts_any_key_as_the_dev_user_but_not_none() -> None:
    keys = ApiKeys(None)
    assert keys.dev_mode
    assert keys.caller("Bearer anything") == Caller(DEV_USER)
    assert keys.caller(None) is None
    assert ApiKeys("  ").dev_mode


@pytest.mark.parametrize("spec", ["k1", "=alice", "k1=", "k1=alice,oops"])
def test_a_malformed_key_list_is_refused_at_start(spec: str) -> None:
    with pytest.raises(ValueError, match="is not key=user_id"):
        ApiKeys(spec)


def test_separate_mode_shows_a_caller_only_its_own_runs() -> None:
    separate = AccessPolicy(AccessMode.SEPARATE)
    shared = AccessPolicy(AccessMode.SHARED)
    alice, bob = Caller("alice"), Caller("bob")
    run = {"user_id": "alice"}
    assert separate.may_see(alice, run)
    assert not separate.may_see(bob, run)
    assert not separate.may_see(alice, {"user_id": None})
    assert shared.may_see(bob, run)
    assert not shared.may_see(alice, None)


def test_every_api_setting_is_read_from_its_documented_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNSTORE_API_ACCESS_MODE", "separate")
    monkeypatch.setenv("RUNSTORE_API_SSE_KEEPALIVE_SECONDS", "2.5")
    monkeypatch.setenv("RUNSTORE_API_BATCH_MAX_IDS", "7")
    settings = ApiSettings(api_port=1234)
    assert settings.api_port == 1234
    assert settings.api_access_mode is AccessMode.SEPARATE
    assert settings.api_sse_keepalive_seconds == 2.5
    assert settings.api_batch_max_ids == 7


# --- limits ------------------------------------------------------------------------------


class Body(BaseModel):
    name: str


def limited_app(max_bytes: int = 1024, per_second: float = 1.0, burst: int = 3) -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: Body) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/missing")
    async def missing() -> None:
        from fastapi import HTTPException

        raise HTTPException(404, "nope")

    @app.get("/conflict")
    async def conflict() -> None:
        from fastapi import HTTPException

        raise HTTPException(409, "busy")

    app.add_middleware(BodySizeLimit, max_bytes=max_bytes)
    app.add_middleware(FailureBudget, per_second=per_second, burst=burst, max_clients=1000)
    return app


def client_for(app: FastAPI, ip: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_a_body_over_the_limit_is_413_before_it_is_parsed() -> None:
    async with client_for(limited_app(max_bytes=1024)) as client:
        small = await client.post("/echo", json={"name": "a"})
        big = await client.post("/echo", json={"name": "a" * 5000})
    assert small.status_code == 200
    assert big.status_code == 413
    assert big.json()["detail"].startswith("request body larger than 1024")


async def test_a_chunked_body_over_the_limit_is_413() -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"name": "'
        for _ in range(10):
            yield b"a" * 500
        yield b'"}'

    async with client_for(limited_app(max_bytes=1024)) as client:
        reply = await client.post(
            "/echo", content=chunks(), headers={"content-type": "application/json"}
        )
    assert reply.status_code == 413


async def test_a_client_out_of_failures_gets_429_and_others_do_not() -> None:
    app = limited_app(per_second=0.5, burst=3)
    async with client_for(app, "10.0.0.1") as noisy, client_for(app, "10.0.0.2") as quiet:
        statuses = [(await noisy.get("/missing")).status_code for _ in range(5)]
        assert statuses == [404, 404, 404, 429, 429]
        limited = await noisy.get("/missing")
        assert limited.headers["retry-after"] == "2"
        assert (await quiet.get("/missing")).status_code == 404
        assert (await noisy.post("/echo", json={"name": "x"})).status_code == 429


async def test_conflicts_and_successes_do_not_drain_the_budget() -> None:
    app = limited_app(per_second=0.1, burst=2)
    async with client_for(app) as client:
        for _ in range(10):
            assert (await client.get("/conflict")).status_code == 409
            assert (await client.post("/echo", json={"name": "x"})).status_code == 200
