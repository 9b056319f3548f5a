"""MongoDB client factory: the only place a client is built."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from services.common.settings import RunstoreSettings

Document = dict[str, Any]


def mongo_client(settings: RunstoreSettings) -> AsyncMongoClient[Document]:
    # tz_aware: datetimes come back as aware UTC, as they went in.
    return AsyncMongoClient(settings.mongo_url, tz_aware=True, maxPoolSize=64)


def mongo_database(
    client: AsyncMongoClient[Document], settings: RunstoreSettings
) -> AsyncDatabase[Document]:
    return client[settings.mongo_database]


DUPLICATE_KEY = 11000

POINT_READ_CONCURRENCY = 32
"""Most `_id` reads one call keeps in flight: enough to hide round trips (FerretDB answers
`$in` with a scan, so batches there are concurrent point reads), few enough for the
connection pool (maxPoolSize 64)."""


async def insert_unless_present(
    coll: AsyncCollection[Document], docs: Sequence[Document]
) -> set[int]:
    """Insert `docs` independently of each other (unordered); return the positions of
    those refused because their `_id` or another unique key is taken. Any other error
    (a write-concern error included) is raised."""
    if not docs:
        return set()
    try:
        await coll.insert_many(list(docs), ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        others = [e for e in errors if e.get("code") != DUPLICATE_KEY]
        if others or exc.details.get("writeConcernErrors"):
            raise
        return {int(e["index"]) for e in errors}
    return set()


async def is_ferretdb(db: AsyncDatabase[Document]) -> bool:
    """Whether the server is FerretDB (one buildInfo round trip: adapters ask once and
    keep the answer, see `ServerKind`).

    Both servers get the same operations; only how many go in one request differs:
    FerretDB scans for `$in` while its `_id` point reads use an index (see
    deploy/local/ferretdb/idindex.go), and its bulk updates slow down super-linearly with
    the number of statements in one command.
    """
    info = await db.client.admin.command("buildInfo")
    return "ferretdbVersion" in info


class ServerKind:
    """`is_ferretdb` of one database, asked on first use and then remembered (by the
    adapter that owns this object, so nothing outlives its client)."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._ferretdb: bool | None = None

    async def ferretdb(self) -> bool:
        if self._ferretdb is None:
            self._ferretdb = await is_ferretdb(self._db)
        return self._ferretdb
