"""MongoDB client factory: the only place a client is built."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from services.common.readmodels.store import EXECUTIONS, RUNS
from services.common.settings import RunstoreSettings

Document = dict[str, Any]


def mongo_client(settings: RunstoreSettings) -> AsyncMongoClient[Document]:
    # tz_aware: datetimes come back as aware UTC, as they went in.
    return AsyncMongoClient(settings.mongo_url, tz_aware=True, maxPoolSize=64)


def mongo_database(
    client: AsyncMongoClient[Document], settings: RunstoreSettings
) -> AsyncDatabase[Document]:
    return client[settings.mongo_database]


def read_models_database(
    client: AsyncMongoClient[Document], settings: RunstoreSettings
) -> AsyncDatabase[Document]:
    """The database of the read models and the projector's parked executions
    (`settings.read_models_database`), apart from the commits' by default.

    FerretDB's SQLite backend keeps each database in a file of its own, and SQLite lets
    one connection write to a file at a time: in the commits' database, every projector
    transaction (two inserts of a batch's new rows and pointers, tens of ms) held the
    engine's next insert back until its commit. In a file of their own they are written
    beside each other (docs/local-store.md). On MongoDB it changes nothing but the name:
    nothing writes both in one transaction."""
    return client[settings.read_models_database]


class ReadModelsElsewhere(RuntimeError):
    """The read models' database cannot be served or projected into yet: empty while the
    commits' database holds read models (a deployment from before they moved, or a
    changed setting), or a rebuild into it started and has not finished."""


READ_MODELS_STATE = "read_models_state"
"""In the read models' database: `{_id: "rebuild", state: "running" | "done", at}`,
written by `runstore projections rebuild` before it drops anything and after its last
insert."""

_REBUILD = "rebuild"


async def mark_rebuild(models: AsyncDatabase[Document], state: str) -> None:
    """Record a rebuild of `models` as `running` (before it drops anything) or `done`."""
    await models[READ_MODELS_STATE].replace_one(
        {"_id": _REBUILD}, {"_id": _REBUILD, "state": state, "at": datetime.now(UTC)}, upsert=True
    )


async def ensure_read_models_in_place(
    client: AsyncMongoClient[Document], settings: RunstoreSettings
) -> None:
    """Refuse to serve or project from a read models' database that holds less than the
    commits say it should: the API would answer empty lists and 404s for runs written
    before (and, on FerretDB, build its run list index from the part it found), and the
    projector would go on from its committed offsets over documents that are not there,
    or write beside a rebuild. Raises `ReadModelsElsewhere`, saying how to go on, when
    - a rebuild into it started and did not finish (still running, or it stopped), or
    - it is apart from the commits' database, has no execution pointer and no finished
      rebuild, and the commits' database holds run rows (a deployment whose read models
      are still there)."""
    models = read_models_database(client, settings)
    name = models.name
    rebuild = await models[READ_MODELS_STATE].find_one({"_id": _REBUILD})
    if rebuild is not None and rebuild.get("state") != "done":
        raise ReadModelsElsewhere(
            f"a rebuild of the read models in {name!r} started at {rebuild.get('at')} and "
            f"has not finished (it is running, or it stopped): wait for it, or run "
            f"`runstore projections rebuild` again, with the API, projectors and timers stopped"
        )
    if name == settings.mongo_database or rebuild is not None:
        return
    if await models[EXECUTIONS].find_one({}, {"_id": 1}) is not None:
        return
    if await client[settings.mongo_database][RUNS].find_one({}, {"_id": 1}) is None:
        return
    raise ReadModelsElsewhere(
        f"the read models' database {name!r} is empty, but {settings.mongo_database!r} "
        f"(the commits' database) holds run rows from before the read models moved. "
        f"Either set RUNSTORE_MONGO_READ_MODELS_DATABASE={settings.mongo_database} to keep "
        f"them there, or stop the API, projectors and timers and run `runstore projections "
        f"rebuild` to build them in {name!r} from the commits (then runs, executions, "
        f"history and parked_executions can be dropped from {settings.mongo_database!r})"
    )


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


ORDERED_PROBE_DOCS = 4096
"""Documents in `ordered_insert_stops_at_refusal`'s probe, and the most an ordered insert
request holds on a server that passes it. Upstream FerretDB writes an insert in batches of
`--batch-size` documents (100 by default) and honours `ordered` only inside one batch: a
server whose batches are smaller than the probe writes some of its later documents and
fails it, and on one whose batches are as large or larger every request of at most this
many documents is inside one batch. Above a round's documents (the engine's batches of up
to 2,000 commands, ~1.4 documents each), so a round is still one request."""


async def ordered_insert_stops_at_refusal(db: AsyncDatabase[Document]) -> bool:
    """Whether the server ends an ordered insert at its first refused document even past
    100 documents: MongoDB does, and so does the local FerretDB (deploy/local/ferretdb/
    01-ordered-insert.patch); upstream FerretDB v1.24.2 goes on with the next hundred.

    Asked by doing it, not by version: in a scratch collection (dropped after), `_id` 0,
    then an ordered insert of `_id` 0..4095 must be refused at its index 0 and write nothing.
    """
    scratch = db[f"probe_ordered_insert_{secrets.token_hex(6)}"]
    try:
        await scratch.insert_one({"_id": 0})
        try:
            await scratch.insert_many([{"_id": i} for i in range(ORDERED_PROBE_DOCS)], ordered=True)
        except BulkWriteError as exc:
            refused = [e.get("index") for e in exc.details.get("writeErrors", [])]
        else:
            return False  # not even the duplicate was refused
        stored = [d["_id"] async for d in scratch.find({}, {"_id": 1})]
        return refused == [0] and stored == [0]
    finally:
        await scratch.drop()
