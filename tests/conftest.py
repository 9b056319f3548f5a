"""Session fixtures: one real Kafka and one MongoDB-protocol server per test session;
each test gets its own topic prefix and database so tests never see each other's data."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from schemas.common import check_trusted_models
from services.common.settings import RunstoreSettings
from tests.support.servers import REPO, kafka_server, mongo_server
from tests.support.stack import CORE_SERVICES, Stack, StackWith, private_env, running

REAL_INFRA_FIXTURES = {"kafka_bootstrap", "mongo_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_INFRA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realinfra)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with kafka_server() as address:
        yield address


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    with mongo_server() as url:
        yield url


@pytest.fixture
def isolated(kafka_bootstrap: str, mongo_url: str) -> Iterator[dict[str, str]]:
    with private_env(kafka_bootstrap, mongo_url) as env:
        yield env


@pytest.fixture
def settings(isolated: dict[str, str]) -> RunstoreSettings:
    return RunstoreSettings(
        kafka_bootstrap=isolated["RUNSTORE_KAFKA_BOOTSTRAP"],
        mongo_url=isolated["RUNSTORE_MONGO_URL"],
        mongo_database=isolated["RUNSTORE_MONGO_DATABASE"],
        mongo_read_models_database=isolated["RUNSTORE_MONGO_READ_MODELS_DATABASE"],
        topic_prefix=isolated["RUNSTORE_TOPIC_PREFIX"],
        partitions=int(isolated["RUNSTORE_PARTITIONS"]),
    )


@pytest.fixture
async def mongo_db(settings: RunstoreSettings) -> AsyncIterator[object]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True
    )
    try:
        yield client[settings.mongo_database]
        await client.drop_database(settings.mongo_database)
    finally:
        await client.close()


@pytest.fixture
async def models_db(settings: RunstoreSettings) -> AsyncIterator[object]:
    """The read models' database of services run on `isolated` (apart from `mongo_db`,
    the commits' database, by default: services/common/mongo.py)."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True
    )
    try:
        name = settings.read_models_database
        yield client[name]
        await client.drop_database(name)
    finally:
        await client.close()


@pytest.fixture
def stack(isolated: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """Engine, projector and API as real processes, private to one test."""
    with running(isolated, tmp_path) as s:
        yield s


@pytest.fixture(scope="session")
def stack_with(
    kafka_bootstrap: str, mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> StackWith:
    """Starts stacks with the test's own settings: `with stack_with(RUNSTORE_X="1") as s`
    (module fixtures use it to share one stack; `services=` picks what runs)."""

    @contextmanager
    def start(
        services: tuple[str, ...] = CORE_SERVICES,
        worker_module: str = "examples.workflows",
        **env: str,
    ) -> Iterator[Stack]:
        log_dir = tmp_path_factory.mktemp("stack")
        with (
            private_env(kafka_bootstrap, mongo_url, **env) as settings,
            running(settings, log_dir, services, worker_module) as stack,
        ):
            yield stack

    return start


@pytest.fixture(scope="module")
def module_stack(stack_with: StackWith) -> Iterator[Stack]:
    """One stack shared by a test module (tests must use their own execution ids).

    `module_stack.env` holds its topic prefix and database name.
    """
    with stack_with() as s:
        yield s


# --- the run must prove it talked to real servers ---------------------------------------

_counts = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "realinfra" not in report.keywords:
        return
    if report.when == "call" and report.passed:
        _counts["passed"] += 1
    elif report.failed:
        _counts["failed"] += 1
    elif report.skipped:
        _counts["skipped"] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report = REPO / ".local" / "realinfra-report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(_counts))
    if os.environ.get("RUNSTORE_REQUIRE_REAL_INFRA") == "1" and (
        _counts["passed"] == 0 or _counts["skipped"] > 0
    ):
        print(f"\nreal-server tests did not all run: {_counts}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Every model the engine builds without validation (FrozenModel.trusted) is validated
# as well in the tests, and must come out the same.
check_trusted_models(True)
