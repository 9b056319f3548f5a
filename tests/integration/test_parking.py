"""A commit the read models cannot take parks its execution, on the real MongoDB-protocol
server: the projector and the rebuild go on with every other execution, and the parked
one is projected once its commits can be (after a fix)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from schemas.commits import Commit
from schemas.events import EventType
from services.common.commit_log import COMMITS, commit_to_doc
from services.common.mongo_commit_log import MongoCommitLog
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.readmodels.store import EXECUTIONS, RUNS
from services.projector.parking import (
    ParkedExecutions,
    parked_count,
    parked_executions,
    request_retry,
)
from services.projector.projector import Projector
from services.projector.rebuild import rebuild
from tests.support.eventually import assert_eventually
from tests.support.kafka import produce
from tests.support.stack import Stack
from tests.support.workloads import Workload, store_commits

Db = AsyncDatabase[dict[str, Any]]
POISON = {"a\x00b": "1"}  # a key PyMongo cannot encode (committed before the admission rule)


FIXED = {"a_b": "1"}


def with_search_keys(commit: Commit, keys: dict[str, str]) -> Commit:
    """`commit` with other search keys on its started event, unvalidated (as a commit
    stored before today's schema rule would be)."""
    events = [
        e.model_copy(update={"attributes": e.attributes.model_copy(update={"search_keys": keys})})
        if e.type is EventType.WORKFLOW_EXECUTION_STARTED
        else e
        for e in commit.events
    ]
    return commit.model_copy(update={"events": events})


def workload() -> Workload:
    w = Workload()
    w.start("before")
    started = w.start("poisoned")
    w.commits[w.commits.index(started)] = with_search_keys(started, POISON)
    w.complete("poisoned", result={"a_b": 1})
    w.start("after")
    w.complete("after", result={"fine": True})
    return w


async def fixed(db: Db, w: Workload) -> None:
    """The operator's fix: the poisoned search keys rewritten in the event store."""
    (bad,) = [c for c in w.commits if c.execution_id == "poisoned" and c.seq == 1]
    good = with_search_keys(bad, FIXED)
    await db[COMMITS].replace_one({"_id": good.doc_id}, commit_to_doc(Commit.model_validate(good)))


async def test_an_execution_that_cannot_be_projected_is_parked_and_the_others_go_on(
    mongo_db: Db,
) -> None:
    w = workload()
    await store_commits(mongo_db, w)
    store = MongoReadModelStore(mongo_db)
    await store.setup()
    parking = ParkedExecutions(mongo_db)
    projector = Projector(store, MongoCommitLog(mongo_db), parking=parking)

    await projector.apply(w.all_events(), {"poisoned": 3})  # one batch: no exception

    statuses = {r["execution_id"]: r["status"] for r in (await store.snapshot(RUNS)).values()}
    assert statuses["before"] == "RUNNING" and statuses["after"] == "COMPLETED"
    assert await parked_count(mongo_db) == 1
    (entry,) = await parked_executions(mongo_db)
    assert entry["_id"] == "poisoned" and entry["partition"] == 3
    assert "InvalidDocument" in entry["error"]

    # Its later events are skipped while it is parked; a retry before the fix parks it
    # again, a retry after it projects everything, later commits included.
    restart = w.start("poisoned")
    await store_commits(mongo_db, _only(w, restart))
    await projector.apply(restart.events, {"poisoned": 3})
    assert (await store.load(RUNS, {restart.run_id})) == {}
    assert not await projector.retry_parked("poisoned")
    assert (await parked_executions(mongo_db))[0]["attempts"] == 2
    await fixed(mongo_db, w)
    assert await request_retry(mongo_db) == 1
    assert await projector.retry_parked("poisoned")
    assert await parked_count(mongo_db) == 0
    pointer = (await store.load(EXECUTIONS, {"poisoned"}))["poisoned"]
    assert pointer["latest_run_id"] == restart.run_id and pointer["seq"] == 3
    (first,) = [
        r
        for r in (await store.snapshot(RUNS)).values()
        if r["run_id"] != restart.run_id and r["execution_id"] == "poisoned"
    ]
    assert first["status"] == "COMPLETED" and first["search_keys"] == FIXED


def _only(w: Workload, commit: Commit) -> Workload:
    """A workload holding just `commit` (to store one more commit)."""
    one = Workload()
    one.commits = [commit]
    return one


async def test_a_rebuild_parks_what_it_cannot_project_and_rebuilds_the_rest(mongo_db: Db) -> None:
    w = workload()
    await store_commits(mongo_db, w)
    store = MongoReadModelStore(mongo_db)
    parking = ParkedExecutions(mongo_db)
    report = await rebuild(store, MongoCommitLog(mongo_db), parking=parking)
    assert report.parked == 1
    assert [d["_id"] for d in await parked_executions(mongo_db)] == ["poisoned"]
    pointers = await store.snapshot(EXECUTIONS)
    assert {"before", "after"} <= set(pointers)
    runs = await store.snapshot(RUNS)
    assert {r["execution_id"]: r["status"] for r in runs.values()}["after"] == "COMPLETED"


async def test_the_projector_process_parks_goes_on_and_retries_when_asked(
    isolated: dict[str, str], tmp_path: Path, mongo_db: Db, models_db: Db
) -> None:
    env = {**isolated, "RUNSTORE_PROJECTOR_PARKED_CHECK_SECONDS": "0.5"}
    assert env["RUNSTORE_MONGO_DATABASE"] == mongo_db.name
    w = workload()
    await store_commits(mongo_db, w)
    stack = Stack(env=env, log_dir=tmp_path)
    stack.start("projector")
    try:
        await produce(
            env["RUNSTORE_KAFKA_BOOTSTRAP"],
            f"{env['RUNSTORE_TOPIC_PREFIX']}workflows.events",
            [(e.execution_id, e.model_dump_json().encode()) for e in w.all_events()],
        )

        async def projected_around_it() -> None:
            pointers = await MongoReadModelStore(models_db).snapshot(EXECUTIONS)
            assert pointers.get("after", {}).get("seq") == 2
            assert [d["_id"] for d in await parked_executions(models_db)] == ["poisoned"]

        await assert_eventually(projected_around_it, timeout=60)
        await fixed(mongo_db, w)
        retry = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "projections",
            "retry",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await retry.communicate()
        assert retry.returncode == 0
        assert f"1 parked executions (in {models_db.name!r}) will be retried".encode() in out

        async def unparked() -> None:
            assert await parked_count(models_db) == 0
            pointers = await MongoReadModelStore(models_db).snapshot(EXECUTIONS)
            assert pointers["poisoned"]["seq"] == 2

        await assert_eventually(unparked, timeout=60)
        assert "PARKED execution poisoned" in stack.log_tail("projector", 400)
    finally:
        stack.stop_all()
