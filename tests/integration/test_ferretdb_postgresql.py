"""The local FerretDB wrapper on its PostgreSQL handler (`--handler postgresql`,
docs/local-store.md): it stores and reads, keeps unique indexes, pushes top-level
equality down, and refuses bad flags clearly. Needs PostgreSQL's server binaries
(Debian's postgresql package); skipped without them."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.common.mongo import ordered_insert_stops_at_refusal
from tests.support.servers import REPO

sys.path.insert(0, str(REPO / "deploy" / "local"))
import infra
import postgres

pytestmark = pytest.mark.realinfra


@pytest.fixture(scope="module")
def ferretdb_on_postgresql() -> Iterator[str]:
    try:
        postgres.pg_bin(install=False)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with tempfile.TemporaryDirectory(prefix="runstore-ferretdb-pg-") as tmp:
        work = Path(tmp)
        with (
            postgres.postgres_server(work, database="ferretdb") as (pg_url, _),
            infra.start_ferretdb(
                infra.free_port(), work / "ferretdb", postgresql_url=pg_url
            ) as ferretdb,
        ):
            yield ferretdb.address


async def test_stores_reads_and_keeps_unique_indexes(ferretdb_on_postgresql: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(ferretdb_on_postgresql)
    try:
        coll = client["t_pg"]["runs"]
        await coll.create_index([("stream", 1), ("version", 1)], unique=True)
        await coll.insert_many(
            [{"_id": f"r{i}", "stream": f"s{i % 3}", "version": i} for i in range(30)]
        )
        assert await coll.count_documents({"stream": "s1"}) == 10
        assert await coll.find_one({"_id": "r7"}) == {"_id": "r7", "stream": "s1", "version": 7}
        with pytest.raises(DuplicateKeyError):
            await coll.insert_one({"_id": "other", "stream": "s1", "version": 7})
        assert await coll.count_documents({}) == 30

        # Top-level equality runs in PostgreSQL; a range does not (FerretDB filters it).
        plan = await client["t_pg"].command("explain", {"find": "runs", "filter": {"stream": "s1"}})
        assert plan["filterPushdown"] is True
        plan = await client["t_pg"].command(
            "explain", {"find": "runs", "filter": {"version": {"$gt": 3}}}
        )
        assert plan["filterPushdown"] is False
    finally:
        await client.drop_database("t_pg")
        await client.close()


async def test_an_ordered_insert_stops_at_its_refused_document(ferretdb_on_postgresql: str) -> None:
    # The local build's insert patches (deploy/local/ferretdb/*.patch) are in FerretDB's
    # handler, above both backends: past 100 and past 1,000 documents, as on SQLite.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(ferretdb_on_postgresql)
    try:
        db = client["t_pg_ordered"]
        assert await ordered_insert_stops_at_refusal(db) is True
        await db.c.insert_one({"_id": 1850})
        with pytest.raises(BulkWriteError) as raised:
            await db.c.insert_many([{"_id": i} for i in range(2500)], ordered=True)
        assert [e["index"] for e in raised.value.details["writeErrors"]] == [1850]
        assert await db.c.count_documents({}) == 1851
    finally:
        await client.drop_database("t_pg_ordered")
        await client.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--handler=mysql"], 'bad --handler "mysql"'),
        (["--handler=postgresql"], "--handler postgresql needs --postgresql-url"),
    ],
)
def test_bad_handler_flags_are_refused(flags: list[str], message: str) -> None:
    binary = infra.install_ferretdb()
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [str(binary), "--addr=127.0.0.1:0", f"--data-dir={tmp}", *flags],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode != 0
    assert message in done.stderr
