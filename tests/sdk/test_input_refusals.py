"""Inputs that once gave a 500, a misleading 504 or a 503 get a 4xx with a reason, on the
real stack; the connection stays usable."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.stack import Stack, StackWith

AUTH = {"Authorization": "Bearer test-key", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def api(stack_with: StackWith) -> Iterator[Stack]:
    with stack_with() as stack:
        yield stack


def nested(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def post(api: Stack, path: str, body: bytes | dict[str, Any]) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{api.api_url}{path}", content=content, headers=AUTH, timeout=30)


def started(api: Stack) -> str:
    execution_id = f"in-{uuid.uuid4().hex[:8]}"
    r = post(api, "/v1/workflows/wf/execute", {"execution_id": execution_id})
    assert r.status_code == 200, r.text
    return execution_id


BAD_BODIES = {
    "lone surrogate": b'{"input": {"s": "\\ud800"}}',
    "lone low surrogate in a key": b'{"input": {"\\udc00": 1}}',
    "nested 255 levels": b'{"input": ' + nested(255).encode() + b"}",
    "nested 1000 levels": b'{"input": ' + nested(1000).encode() + b"}",
    "nested 200 levels": b'{"input": ' + nested(200).encode() + b"}",
    "nested 100 levels": b'{"input": ' + nested(100).encode() + b"}",
    "NaN": b'{"input": NaN}',
    "infinite number": b'{"input": 1e400}',
    "NUL in a key": b'{"input": {"a\\u0000b": 1}}',
    "key starting with $": b'{"input": {"$set": 1}}',
    "key with a dot": b'{"input": {"a.b": 1}}',
    "integer over 64 bits": b'{"input": 123456789012345678901234567890}',
}


@pytest.mark.parametrize("case", BAD_BODIES)
@pytest.mark.parametrize("endpoint", ["execute", "signal"])
def test_a_body_no_store_can_take_is_a_422_with_a_reason(
    api: Stack, case: str, endpoint: str
) -> None:
    body = BAD_BODIES[case]
    if endpoint == "execute":
        path = "/v1/workflows/wf/execute"
    else:
        path = f"/v1/workflows/executions/{started(api)}/signals"
        body = body.replace(b"{", b'{"name": "s", ', 1)
    r = post(api, path, body)
    assert r.status_code == 422, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert detail and detail[0]["msg"], detail


def test_the_connection_stays_usable_after_a_refused_body(api: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    try:
        for _ in range(3):
            conn.request(
                "POST", "/v1/workflows/wf/execute", body=BAD_BODIES["lone surrogate"], headers=AUTH
            )
            bad = conn.getresponse()
            assert bad.status == 422 and b"surrogate" in bad.read()
            conn.request("POST", "/v1/workflows/wf/execute", body=b"{}", headers=AUTH)
            good = conn.getresponse()
            assert good.status == 200, good.read()
            good.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "bad", ["a\x00b", "a\x1bb", "a\x7fb", "a\u202eb", "a\u2066b", "a\u200fb", "a\x85b"]
)
def test_control_characters_in_workflow_names_and_execution_ids_are_refused(
    api: Stack, bad: str
) -> None:
    by_id = post(api, "/v1/workflows/wf/execute", {"execution_id": bad})
    assert by_id.status_code == 422, by_id.text
    assert "control" in by_id.text or "whitespace" in by_id.text
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    try:
        conn.request("POST", f"/v1/workflows/{quote(bad, safe='')}/execute", b"{}", AUTH)
        by_name = conn.getresponse()
        assert by_name.status == 422, by_name.read()
    finally:
        conn.close()


def test_the_body_limit_is_below_what_the_command_topic_accepts(api: Stack) -> None:
    limit = 900 * 1024
    filler = limit - len(b'{"input": ""}') - 100
    r = post(api, "/v1/workflows/wf/execute", {"input": "x" * filler})
    assert r.status_code == 200, r.text[:300]  # not 503 MessageSizeTooLarge
    r = post(api, "/v1/workflows/wf/execute", {"input": "x" * (limit + 1)})
    assert r.status_code == 413


def test_a_body_that_grows_past_the_command_limit_when_encoded_is_413(api: Stack) -> None:
    # Under the body limit, but the engine would write each `1E15` in 18 bytes.
    body = b'{"input": [' + b",".join([b"1E15"] * 150_000) + b"]}"
    r = post(api, "/v1/workflows/wf/execute", body)
    assert r.status_code == 413 and "too_large" in r.text, r.text[:300]
