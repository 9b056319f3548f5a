"""The Projector and the RunReader against the real MongoDB-protocol server.

- Projector idempotency: the same events fed twice (whole, in other batchings, with old
  events re-delivered after newer ones) leave exactly the documents of one feeding.
- Gap filling from the real `commits` collection.
- Point reads fold the commits the projector has not applied yet.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.api.run_reader import RunReader
from services.common.mongo_commit_log import MongoCommitLog
from services.common.readmodels.mongo_reader import MongoReadModelReader
from services.common.readmodels.mongo_store import MongoReadModelStore
from services.common.readmodels.store import EXECUTIONS, HISTORY, READ_MODELS, RUNS
from services.projector.projector import Projector
from tests.support.workloads import Workload, mixed_workload, store_commits


def mongo_reader(db: Any) -> RunReader:
    """The API's reader over `db`."""
    models, commits = MongoReadModelReader(db), MongoCommitLog(db)
    return RunReader(models, commits)


Db = AsyncDatabase[dict[str, Any]]


async def snapshot(store: MongoReadModelStore) -> dict[str, dict[str, Any]]:
    return {name: await store.snapshot(name) for name in READ_MODELS}


async def test_the_same_events_twice_equal_once(mongo_db: Db) -> None:
    events = mixed_workload().all_events()
    store = MongoReadModelStore(mongo_db)
    await store.setup()
    projector = Projector(store)
    await projector.apply(events)
    once = await snapshot(store)
    assert len(once[RUNS]) == 10 and len(once[EXECUTIONS]) == 8

    await projector.apply(events)  # the whole batch re-delivered
    for k in range(0, len(events), 3):  # old events re-delivered in small batches
        await projector.apply(events[k : k + 3])
    await projector.apply(list(reversed(events)))  # and backwards
    assert await snapshot(store) == once


async def test_a_restarted_projector_finds_what_it_wrote_by_refused_inserts(
    mongo_db: Db,
) -> None:
    """New executions are inserted without reads; a projector that remembers nothing
    (restarted) and is handed everything again learns from the server's duplicate-key
    answers that they exist, folds onto them, and changes nothing. The same when the
    first attempt died between its history and its pointers."""
    events = mixed_workload().all_events()
    store = MongoReadModelStore(mongo_db)
    await store.setup()
    await Projector(store).apply(events)
    once = await snapshot(store)
    await Projector(store).apply(events)
    assert await snapshot(store) == once

    await mongo_db[EXECUTIONS].delete_many({})  # "crashed" before writing the pointers
    await Projector(store).apply(events)
    assert await snapshot(store) == once


async def test_insert_new_reports_exactly_the_existing_ids(mongo_db: Db) -> None:
    store = MongoReadModelStore(mongo_db)
    assert await store.insert_new(RUNS, {"a": {"_id": "a", "n": 1}}) == set()
    refused = await store.insert_new(
        RUNS, {"a": {"_id": "a", "n": 2}, "b": {"_id": "b", "n": 2}, "c": {"_id": "c", "n": 2}}
    )
    assert refused == {"a"}
    assert await store.snapshot(RUNS) == {
        "a": {"_id": "a", "n": 1},
        "b": {"_id": "b", "n": 2},
        "c": {"_id": "c", "n": 2},
    }


async def test_batching_does_not_change_the_result(mongo_db: Db) -> None:
    events = mixed_workload().all_events()
    whole = MongoReadModelStore(mongo_db)
    await Projector(whole).apply(events)
    expected = await snapshot(whole)
    await whole.drop_all()
    one_by_one = Projector(whole)
    for e in events:
        await one_by_one.apply([e])
    assert await snapshot(whole) == expected


async def test_a_lost_commit_is_filled_from_the_event_store(mongo_db: Db) -> None:
    w = mixed_workload()
    await store_commits(mongo_db, w)
    events = w.all_events()
    store = MongoReadModelStore(mongo_db)
    await Projector(store).apply(events)
    expected = await snapshot(store)
    await store.drop_all()

    # Lose every other commit that a later commit of its execution follows (a gap shows
    # only when a later event arrives).
    last = {c.execution_id: c.seq for c in w.commits}
    lost = {(c.execution_id, c.seq) for c in w.commits[::2] if c.seq < last[c.execution_id]}
    assert len(lost) >= 3
    kept = [e for e in events if (e.execution_id, e.seq) not in lost]
    await Projector(store, MongoCommitLog(mongo_db)).apply(kept)
    assert await snapshot(store) == expected


async def test_point_reads_fold_commits_the_projector_has_not_applied(mongo_db: Db) -> None:
    w = Workload()
    w.start("a", display_name="first")
    store = MongoReadModelStore(mongo_db)
    await Projector(store).apply(w.all_events())  # the projector saw only the start
    first_run = w.run_id("a")
    w.signals("a", 150)
    w.reset("a", event_id=1)  # a new run, not projected at all
    second_run = w.run_id("a")
    w.signal("a")
    w.start("b")  # an execution the projector never saw
    await store_commits(mongo_db, w)
    reader = mongo_reader(mongo_db)

    latest = await reader.execution("a")
    assert latest is not None and latest["run_id"] == second_run
    assert latest["status"] == "RUNNING"
    old = await reader.run(first_run)
    assert old is not None and old["status"] == "TERMINATED"
    new = await reader.run(second_run)  # unknown to the projection: found via commits
    assert new is not None and new["execution_id"] == "a"
    fresh = await reader.execution("b")
    assert fresh is not None and fresh["status"] == "RUNNING"

    found = await reader.run_history(first_run)
    assert found is not None
    _, history = found
    assert [e["event_number"] for e in history] == list(range(1, 153))
    assert history[0]["type"] == "WORKFLOW_EXECUTION_STARTED"
    assert history[-1]["type"] == "WORKFLOW_EXECUTION_TERMINATED"
    found = await reader.execution_history("a")
    assert found is not None and found[0]["run_id"] == second_run
    assert [e["type"] for e in found[1]][:2] == [
        "WORKFLOW_RUN_RESET",
        "WORKFLOW_EXECUTION_STARTED",
    ]
    assert await reader.run("no-such-run") is None
    assert await reader.execution("no-such-execution") is None
    assert await reader.run_history("no-such-run") is None


async def test_history_reads_join_projected_chunks_and_newer_commits(mongo_db: Db) -> None:
    w = Workload()
    w.start("a")
    w.signals("a", 120)
    store = MongoReadModelStore(mongo_db)
    await Projector(store).apply(w.all_events())
    w.signals("a", 90)
    w.complete("a", result=3)
    await store_commits(mongo_db, w)
    found = await mongo_reader(mongo_db).run_history(w.run_id("a"))
    assert found is not None
    run, history = found
    assert run["status"] == "COMPLETED" and run["event_count"] == 212
    assert [e["event_number"] for e in history] == list(range(1, 213))
    stored = [e.model_dump(mode="json") for e in w.all_events()]
    assert history == stored
    assert len(await store.snapshot(HISTORY)) == 1  # projected chunks only (0 is the head)
