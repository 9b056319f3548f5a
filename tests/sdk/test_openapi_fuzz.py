"""The short, seeded schemathesis run of `make test`, over the running stack.

Engine, projector and API run as real processes on Kafka + FerretDB. schemathesis
(`schemathesis==4.32.5`, through the engine its `schemathesis run` uses; its lazy pytest
loader does not work with pytest 9) reads `/openapi.json` from the API and sends, for
every operation of the document, the document's examples, its coverage cases (boundary
values, missing and wrong-typed parameters, unexpected methods: positive and negative) and
a few fuzzed requests, and checks every answer: no 5xx, a status code the operation
declares, a declared content type, a body and headers that match the declared schema.

What is checked and how much is generated: tests/sdk/schemathesis.toml (4 fuzzed requests
per operation, no example database), generation derandomized (the same requests on every
run; the seed, 18, is what the long run uses). Both
access modes run: `shared` (any workflow name starts, so generated executions reach the
engine), and `separate` with the default that only registered workflows start (every id
that names an execution is an owner check).

SSE routes (`text/event-stream`) are in the run: schemathesis reads a stream until its
first event or for a second (keep-alive comments every 0.2 s keep the read moving), then
validates the content type and each event read. `tests/sdk/test_openapi.py` reads one real
event of each stream as well.

The long run (more examples, the stateful phase, against `make up`):
`bench/schemathesis_long.sh`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from schemathesis import engine
from schemathesis.engine import events

from tests.support.fuzzing import short_run_config
from tests.support.stack import Stack, StackWith


@pytest.fixture(scope="module", params=["shared", "separate"])
def fuzzed_stack(request: pytest.FixtureRequest, stack_with: StackWith) -> Iterator[Stack]:
    mode = request.param
    with stack_with(
        RUNSTORE_API_ACCESS_MODE=mode,
        # The default (only registered workflows start) in separate mode; any name starts
        # in shared mode, so generated executions reach the engine.
        RUNSTORE_API_ALLOW_UNREGISTERED=str(mode == "shared").lower(),
        RUNSTORE_API_SSE_KEEPALIVE_SECONDS="0.2",
        # Every generated request with a bad value fails: the failure budget must not
        # turn the run into 429s.
        RUNSTORE_API_BAD_REQUESTS_BURST="1000000",
        # No worker runs: queries and updates answer 504 `no_worker_reply` quickly, and a
        # generated `wait_for_result` waits a second at most.
        RUNSTORE_API_WORKER_TIMEOUT_SECONDS="1",
        RUNSTORE_API_WAIT_MAX_SECONDS="1",
    ) as stack:
        yield stack


@dataclass
class RunReport:
    """What one engine run did and found."""

    operations: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    content_types: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{len(self.operations)} operations, {sum(self.requests.values())} requests "
            f"({dict(self.requests)}), statuses {dict(sorted(self.statuses.items()))}, "
            f"content types {dict(self.content_types)}, {self.seconds:.0f} s"
        )


def run_schemathesis(api_url: str) -> RunReport:
    """The engine `schemathesis run` uses, over the API's own document."""
    config = short_run_config(api_url)
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json", config=config)
    report = RunReport()
    began = time.monotonic()
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.label:
            report.operations[event.label] += 0
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                report.operations[event.label] += 1
                report.requests[event.phase.value] += 1
                if interaction.response is not None:
                    response = interaction.response
                    report.statuses[response.status_code] += 1
                    media = response.headers.get("content-type", ["-"])[0].split(";")[0]
                    report.content_types[media] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        report.failures.append(
                            f"{event.label} [{check.name}]: {check.failure_info.failure.title}"
                            f" {check.failure_info.failure.message[:400]}\n"
                            f"    {check.failure_info.code_sample}"
                        )
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            report.errors.append(f"{getattr(event, 'label', '')}: {event.info.format()[:600]}")
    report.seconds = time.monotonic() - began
    return report


def test_every_operation_answers_only_what_the_openapi_declares(fuzzed_stack: Stack) -> None:
    mode = fuzzed_stack.env["RUNSTORE_API_ACCESS_MODE"]
    document = httpx.get(f"{fuzzed_stack.api_url}/openapi.json").json()
    declared = {
        f"{method.upper()} {path}"
        for path, methods in document["paths"].items()
        for method in methods
    }
    report = run_schemathesis(fuzzed_stack.api_url)
    print(f"\nschemathesis, {mode} mode, derandomized: {report.summary()}")
    assert not report.errors, "\n".join(report.errors)
    assert not report.failures, "\n".join(report.failures)
    assert set(report.operations) == declared
    assert not [label for label, sent in report.operations.items() if sent == 0]
    # The streams were read (and their content type and events validated), not skipped.
    assert report.content_types["text/event-stream"] > 0
