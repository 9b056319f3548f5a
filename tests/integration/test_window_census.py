"""The API's command window on a running API (`runstore api`, services/api/
connection_census.py): when every HTTP connection's request waits for an answer, the
window goes out at once instead of after its quiet time; with
`RUNSTORE_API_PUBLISH_WHEN_ALL_WAIT=false` it waits as before. A client alone on one
keep-alive connection is that case for each of its requests."""

from __future__ import annotations

import uuid

import httpx

from tests.support.metrics import metric_value
from tests.support.servers import free_port
from tests.support.stack import Stack

HEADERS = {"Authorization": "Bearer test-key"}
WINDOWS = "runstore_api_command_windows_total"


def _executes(url: str, count: int) -> tuple[float, float]:
    """`count` executes one after the other on one connection (the metrics are read on
    it too: no other connection stays open); the windows ended by 'all_waiting' and by
    the quiet time or the linger meanwhile."""
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30) as client:

        def ended() -> tuple[float, float]:
            text = client.get("/metrics").text
            timed = metric_value(text, WINDOWS, ended="quiet") + metric_value(
                text, WINDOWS, ended="linger"
            )
            return metric_value(text, WINDOWS, ended="all_waiting"), timed

        before = ended()
        for n in range(count):
            reply = client.post(
                "/v1/workflows/census/execute",
                json={"execution_id": f"census-{uuid.uuid4().hex[:8]}-{n}", "input": {}},
            )
            assert reply.status_code == 200, reply.text
        after = ended()
    return after[0] - before[0], after[1] - before[1]


def test_a_lone_clients_commands_go_out_without_waiting_for_others(stack: Stack) -> None:
    all_waiting, timed = _executes(stack.api_url, 8)
    # Each execute's window ended at once. (One may have waited: a connection of the
    # stack's readiness probe closing just then.)
    assert all_waiting >= 7
    assert timed <= 1

    stack.start(
        "api",
        "api-timed",
        env={"RUNSTORE_API_PUBLISH_WHEN_ALL_WAIT": "false"},
        api_port=free_port(),
    )
    all_waiting, timed = _executes(stack.url_of("api-timed"), 8)
    assert all_waiting == 0
    assert timed == 8
