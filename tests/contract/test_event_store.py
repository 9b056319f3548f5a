"""The EventStore contract, written once and run against every adapter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from schemas.commits import Commit
from services.common.commit_log import commit_filter, commit_from_doc
from services.common.mongo_commit_log import MongoCommitLog
from services.engine.event_store import AppendFailure, AppendReport, RoundReport
from services.engine.event_store import EventStoreAdapter as EventStore
from services.engine.memory_event_store import MemoryEventStore
from services.engine.mongo_event_store import MongoEventStore
from tests.support.commits import make_commit as commit_at


def make_commit(execution_id: str, seq: int, command_id: str | None = None) -> Commit:
    return commit_at(execution_id, seq, run_id="run-1", command_id=command_id, with_source=True)


async def seqs_stored(store: EventStore, execution_id: str, up_to: int) -> list[int]:
    """Which of seqs 1..`up_to` are stored, gaps included (`read_stream` stops at one)."""
    return [s for s in range(1, up_to + 1) if await store.get(execution_id, s) is not None]


class InsertCounter(CommandListener):
    """Counts the insert requests a client sends."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "insert":
            self.count += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


def in_own_run(execution_id: str, seq: int, command_id: str | None = None) -> Commit:
    """A commit of run `{execution_id}-run` (seq 1 opens it): every execution opens a run
    of its own, so a round's run locators are all new (see the Mongo adapter)."""
    return commit_at(
        execution_id, seq, run_id=f"{execution_id}-run", command_id=command_id, with_source=True
    )


class EventStoreContract:
    """Subclasses provide `store`; every adapter must pass all of these."""

    async def test_latest_of_unknown_execution_is_absent(self, store: EventStore) -> None:
        assert await store.latest(["nope"]) == {}

    async def test_appended_commits_are_read_back_in_order(self, store: EventStore) -> None:
        commits = [make_commit("e1", s) for s in (1, 2, 3)]
        report = await store.append(commits)
        assert report.inserted == 3 and report.failure is None
        assert [c.seq async for c in store.read_stream("e1")] == [1, 2, 3]
        assert [c.seq async for c in store.read_stream("e1", after_seq=2)] == [3]
        assert await store.get("e1", 2) == commits[1]

    async def test_latest_finds_newest_commit_even_without_a_head(self, store: EventStore) -> None:
        await store.append([make_commit("e1", 1), make_commit("e2", 1), make_commit("e2", 2)])
        latest = await store.latest(["e1", "e2", "e3"])
        assert {e: c.seq for e, c in latest.items()} == {"e1": 1, "e2": 2}

    @pytest.mark.parametrize("length", [1, 2, 3, 7, 8, 9, 37])
    async def test_latest_finds_the_end_of_streams_of_any_length(
        self, store: EventStore, length: int
    ) -> None:
        await store.append([make_commit("e1", s) for s in range(1, length + 1)])
        assert (await store.latest(["e1"]))["e1"].seq == length

    async def test_same_command_twice_is_reported_and_not_stored(self, store: EventStore) -> None:
        await store.append([make_commit("e1", 1, command_id="c1")])
        report = await store.append([make_commit("e1", 2, command_id="c1")])
        assert report.inserted == 0
        assert report.failure is AppendFailure.DUPLICATE_COMMAND
        assert [c.seq async for c in store.read_stream("e1")] == [1]
        found = await store.find_by_command("c1")
        assert found is not None and found.seq == 1

    async def test_taken_seq_is_a_conflict(self, store: EventStore) -> None:
        await store.append([make_commit("e1", 1, command_id="first")])
        report = await store.append([make_commit("e1", 1, command_id="second")])
        assert report.failure is AppendFailure.CONFLICT
        stored = await store.get("e1", 1)
        assert stored is not None and stored.command_id == "first"

    async def test_append_stops_at_first_failure(self, store: EventStore) -> None:
        await store.append([make_commit("e1", 1, command_id="x")])
        batch = [make_commit("e2", 1), make_commit("e1", 1, command_id="y"), make_commit("e3", 1)]
        report = await store.append(batch)
        assert report.inserted == 1 and report.failure is AppendFailure.CONFLICT
        assert await store.get("e2", 1) is not None
        assert await store.get("e3", 1) is None

    @pytest.mark.parametrize("run_locator", ["new", "stored"])
    @pytest.mark.parametrize("refused_at", [0, 7, 99, 100, 101, 130])
    async def test_a_long_append_writes_nothing_after_its_refused_commit(
        self, store: EventStore, refused_at: int, run_locator: str
    ) -> None:
        # Longer than one of FerretDB v1's insert batches (100 documents): it used to go
        # on with the next hundred after a refusal, leaving a gap in the stream. With
        # the run's locator stored already (a retry), the refusal is that locator.
        at = make_commit if run_locator == "stored" else in_own_run
        await store.append([at("other", 1, command_id="dup")])
        commits = [at("e1", s) for s in range(1, 151)]
        commits[refused_at] = at("e1", refused_at + 1, command_id="dup")
        report = await store.append(commits)
        assert report == AppendReport(refused_at, AppendFailure.DUPLICATE_COMMAND)
        assert await seqs_stored(store, "e1", 150) == list(range(1, refused_at + 1))

    @pytest.mark.parametrize("failure", list(AppendFailure))
    async def test_a_long_round_writes_nothing_after_its_refused_commit(
        self, store: EventStore, failure: AppendFailure
    ) -> None:
        # Locators and first commits ahead of the rest shift where the server's batches
        # of 100 documents end; the refused commit lies in the first one.
        await store.append([in_own_run("old", 1), in_own_run("old", 2, command_id="dup")])
        firsts = [in_own_run(f"new{i}", 1) for i in range(4)]
        rest = [in_own_run("old", s) for s in range(3, 143)]
        taken = rest[20]
        rest[20] = (
            in_own_run("old", taken.seq, command_id="dup")
            if failure is AppendFailure.DUPLICATE_COMMAND
            else in_own_run("old", 2, command_id=taken.command_id)
        )
        round_ = await store.append_round(firsts, rest)
        assert round_.refused == set() and round_.appended == rest
        assert round_.report == AppendReport(20, failure)
        assert await seqs_stored(store, "old", 142) == list(range(1, 23))
        news = [f"new{i}" for i in range(4)]
        assert {e: c.seq for e, c in (await store.latest(news)).items()} == dict.fromkeys(news, 1)

    async def test_first_commits_go_in_independently_and_refusals_are_reported(
        self, store: EventStore
    ) -> None:
        await store.append([make_commit("taken", 1, command_id="t1")])
        await store.append([make_commit("other", 1, command_id="used")])
        batch = [
            make_commit("new1", 1),
            make_commit("taken", 1, command_id="t2"),  # the execution exists
            make_commit("new2", 1, command_id="used"),  # the command id is stored
            make_commit("new3", 1),
        ]
        assert await store.append_first(batch) == {1, 2}
        assert {e: c.seq for e, c in (await store.latest(["new1", "new2", "new3"])).items()} == {
            "new1": 1,
            "new3": 1,
        }
        stored = await store.get("taken", 1)
        assert stored is not None and stored.command_id == "t1"
        # The same batch again (a redelivery): every one is refused, nothing doubles.
        assert await store.append_first(batch) == {0, 1, 2, 3}
        assert [c.seq async for c in store.read_stream("new1")] == [1]

    async def test_a_round_appends_the_rest_of_executions_whose_first_commit_went_in(
        self, store: EventStore
    ) -> None:
        await store.append([make_commit("taken", 1, command_id="t1")])
        firsts = [make_commit("new1", 1), make_commit("taken", 1, command_id="t2")]
        rest = [
            make_commit("new1", 2),
            make_commit("taken", 2),  # follows a refused first commit: not attempted
            make_commit("new1", 3),
        ]
        round_ = await store.append_round(firsts, rest)
        assert round_.refused == {1}
        assert [c.doc_id for c in round_.appended] == [rest[0].doc_id, rest[2].doc_id]
        assert round_.report == AppendReport(inserted=2)
        assert [c.seq async for c in store.read_stream("new1")] == [1, 2, 3]
        assert [c.command_id async for c in store.read_stream("taken")] == ["t1"]

        # Again (a redelivery): every first is refused, so nothing else is attempted.
        again = await store.append_round(firsts, rest)
        assert again.refused == {0, 1} and again.appended == []
        assert again.report == AppendReport(inserted=0)

    async def test_a_round_reports_where_its_append_stopped(self, store: EventStore) -> None:
        await store.append([make_commit("old", 1), make_commit("old", 2, command_id="dup")])
        rest = [make_commit("old", 3), make_commit("old", 4, command_id="dup")]
        round_ = await store.append_round([make_commit("new", 1)], rest)
        assert round_.refused == set() and round_.appended == rest
        assert round_.report == AppendReport(1, AppendFailure.DUPLICATE_COMMAND)
        assert await store.get("new", 1) is not None

    async def test_a_round_of_new_runs_refuses_a_taken_first_and_appends_the_rest(
        self, store: EventStore
    ) -> None:
        await store.append([in_own_run("taken", 1, command_id="t1")])
        firsts = [
            commit_at("taken", 1, run_id="other-run", command_id="t2"),  # the execution exists
            in_own_run("new1", 1),
            in_own_run("new2", 1),
        ]
        rest = [
            in_own_run("new1", 2),
            in_own_run("taken", 2),  # follows a refused first commit: not attempted
            in_own_run("new2", 2),
            in_own_run("new1", 3),
        ]
        round_ = await store.append_round(firsts, rest)
        assert round_.refused == {0}
        assert round_.appended == [rest[0], rest[2], rest[3]]
        assert round_.report == AppendReport(inserted=3)
        assert [c.seq async for c in store.read_stream("new1")] == [1, 2, 3]
        assert [c.seq async for c in store.read_stream("new2")] == [1, 2]
        assert [c.command_id async for c in store.read_stream("taken")] == ["t1"]

        # Again (a redelivery): every first is refused, nothing doubles.
        again = await store.append_round(firsts, rest)
        assert again.refused == {0, 1, 2} and again.appended == []
        assert [c.seq async for c in store.read_stream("new1")] == [1, 2, 3]

    async def test_a_round_of_new_runs_reports_where_its_append_stopped(
        self, store: EventStore
    ) -> None:
        await store.append([in_own_run("old", 1), in_own_run("old", 2, command_id="dup")])
        rest = [in_own_run("old", 3), in_own_run("old", 4, command_id="dup"), in_own_run("old", 5)]
        round_ = await store.append_round([in_own_run("new", 1)], rest)
        assert round_.refused == set() and round_.appended == rest
        assert round_.report == AppendReport(1, AppendFailure.DUPLICATE_COMMAND)
        assert await store.get("new", 1) is not None
        assert [c.seq async for c in store.read_stream("old")] == [1, 2, 3]

    async def test_append_first_takes_only_first_commits(self, store: EventStore) -> None:
        with pytest.raises(ValueError, match="first commits only"):
            await store.append_first([make_commit("e1", 2)])

    async def test_append_first_with_a_later_commit_writes_nothing(self, store: EventStore) -> None:
        with pytest.raises(ValueError, match="first commits only"):
            await store.append_first([make_commit("e1", 1), make_commit("e2", 2)])
        assert await store.get("e1", 1) is None

    async def test_a_taken_seq_is_a_conflict_even_when_the_command_is_stored_too(
        self, store: EventStore
    ) -> None:
        await store.append([make_commit("e1", 1, command_id="first")])
        await store.append([make_commit("e2", 1, command_id="again")])
        report = await store.append([make_commit("e1", 1, command_id="again")])
        assert report == AppendReport(0, AppendFailure.CONFLICT)

    async def test_a_stream_read_from_before_its_start_is_read_whole(
        self, store: EventStore
    ) -> None:
        await store.append([make_commit("e1", 1), make_commit("e1", 2)])
        assert [c.seq async for c in store.read_stream("e1", after_seq=-1)] == [1, 2]
        assert [c.seq async for c in store.read_stream("e1", after_seq=2)] == []
        assert [c.seq async for c in store.read_stream("nope")] == []

    async def test_find_by_unknown_command_is_none(self, store: EventStore) -> None:
        assert await store.find_by_command("missing") is None

    @pytest.mark.parametrize("hinted", [True, False])
    async def test_find_by_commands_with_and_without_stream_hints(
        self, store: EventStore, hinted: bool
    ) -> None:
        commits = [make_commit("e1", s) for s in (1, 2, 3)] + [make_commit("e2", 1)]
        await store.append(commits)
        wanted = {"cmd-e1-2", "cmd-e2-1", "missing"}
        streams = {"e1": 3, "e2": 4} if hinted else None  # e2's newest may not be stored yet
        found = await store.find_by_commands(wanted, streams)
        assert found == {"cmd-e1-2": commits[1], "cmd-e2-1": commits[3]}


class TestMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def store(self) -> EventStore:
        return MemoryEventStore()


class TestMongoEventStoreInRequestsOf100(EventStoreContract):
    """With the ordered-insert probe turned off (RUNSTORE_ENGINE_ORDERED_INSERT_PROBE=false,
    also what a server that fails it gets): rounds go in requests of 100 documents."""

    @pytest.fixture
    async def store(self, db: Any) -> EventStore:
        store = MongoEventStore(db, probe_ordered=False)
        await store.setup()
        return store


@contextlib.asynccontextmanager
async def counting_store(
    mongo_url: str, db: Any, probe_ordered: bool = True
) -> AsyncIterator[tuple[MongoEventStore, InsertCounter]]:
    """A `MongoEventStore` on `db`, set up, on a client that counts the insert requests
    sent from then on."""
    inserts = InsertCounter()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[inserts]
    )
    try:
        store = MongoEventStore(client[db.name], probe_ordered=probe_ordered)
        await store.setup()
        inserts.count = 0
        yield store, inserts
    finally:
        await client.close()


async def insert_requests_of_a_long_round(mongo_url: str, db: Any, probe_ordered: bool) -> int:
    """How many insert requests a store sends for a round of 150 new commits."""
    async with counting_store(mongo_url, db, probe_ordered) as (store, inserts):
        commits = [in_own_run("e1", s) for s in range(1, 151)]
        assert await store.append(commits) == AppendReport(inserted=150)
        return inserts.count


async def test_a_long_round_is_one_request_on_a_server_that_stops_at_a_refusal(
    db: Any, mongo_url: str
) -> None:
    # The session's server is MongoDB or the local, patched FerretDB: both pass the probe.
    assert await insert_requests_of_a_long_round(mongo_url, db, probe_ordered=True) == 1


async def test_a_long_round_goes_in_requests_of_100_with_the_probe_turned_off(
    db: Any, mongo_url: str
) -> None:
    # 151 documents: the run's locator, then 150 commits.
    assert await insert_requests_of_a_long_round(mongo_url, db, probe_ordered=False) == 2


class TestMongoEventStore(EventStoreContract):
    """On the session's server, in a fresh database (`db`, tests/contract/conftest.py);
    the probe finds it stops an ordered insert at its refusal, so a round is one request."""

    @pytest.fixture
    async def store(self, db: Any) -> EventStore:
        store = MongoEventStore(db)
        await store.setup()
        return store

    async def test_a_run_is_locatable_once_its_start_is_appended(
        self, store: EventStore, db: Any
    ) -> None:
        commits = MongoCommitLog(db)
        assert await commits.locate_run("run-1") is None
        await store.append([make_commit("e1", 1)])  # opens run-1
        assert await commits.locate_run("run-1") == "e1"
        # Appending again (a retry after a crash) finds the locator there: no error.
        report = await store.append([make_commit("e1", 1, command_id="again")])
        assert report.failure is AppendFailure.CONFLICT
        assert await store.append_first([make_commit("e1", 1, command_id="again")]) == {0}
        assert await commits.locate_run("run-1") == "e1"

    async def test_a_round_is_one_insert_request_when_nothing_is_refused(
        self, db: Any, mongo_url: str
    ) -> None:
        async with counting_store(mongo_url, db) as (store, inserts):
            await store.append([in_own_run("old", 1)])
            inserts.count = 0
            firsts = [in_own_run("new1", 1), in_own_run("new2", 1)]
            rest = [in_own_run("old", 2), in_own_run("new1", 2)]
            assert await store.append_round(firsts, rest) == RoundReport(
                set(), rest, AppendReport(inserted=2)
            )
            assert inserts.count == 1
            log = MongoCommitLog(db)
            assert await log.locate_run("new1-run") == "new1"
            assert await log.locate_run("new2-run") == "new2"

    async def test_run_locators_are_not_read_as_commits(self, store: EventStore, db: Any) -> None:
        await store.append([in_own_run("e1", 1), in_own_run("e1", 2), in_own_run("e2", 1)])
        log = MongoCommitLog(db)
        assert [c.doc_id async for c in log.scan()] == [
            "e1:000000000001",
            "e1:000000000002",
            "e2:000000000001",
        ]
        assert await db.commits.count_documents(commit_filter("e1")) == 2
        assert await store.find_by_commands({"cmd-e1-1", "e1-run"}) == {
            "cmd-e1-1": await store.get("e1", 1)
        }
        assert await log.locate_run("e2-run") == "e2"

    async def test_runs_located_by_an_older_engine_are_still_found(self, db: Any) -> None:
        await db.run_locators.insert_one({"_id": "old-run", "execution_id": "old"})
        assert await MongoCommitLog(db).locate_run("old-run") == "old"
        assert await MongoCommitLog(db).locate_run("unknown-run") is None

    async def test_commits_are_stored_as_flat_fields_and_a_json_body(
        self, store: EventStore, db: Any
    ) -> None:
        commit = make_commit("e1", 1)
        await store.append([commit])
        doc = await db.commits.find_one({"_id": "e1:000000000001"})
        assert list(doc) == ["_id", "command_id", "committed_at", "body"]
        assert doc["command_id"] == commit.command_id
        assert commit_from_doc(doc) == commit
        # An execution's commits are found by `_id` alone (not another's whose id starts
        # the same).
        await store.append([make_commit("e1:0", 1)])
        found = [d["_id"] async for d in db.commits.find(commit_filter("e1")).sort("_id", 1)]
        assert found == ["e1:000000000001"]
        assert await store.find_by_command(commit.command_id) == commit
