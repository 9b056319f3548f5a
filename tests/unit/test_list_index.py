"""The in-memory run list index (services/common/readmodels/list_index.py) kept by the
projector's fold: events applied to it give the rows the projector writes, however they
are split between a snapshot of the store and the events after it, and re-applied events
change nothing. (Its pages are held to the store's by tests/contract/test_read_models.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from schemas.events import EVENT_LIST_ADAPTER, STATUS_AFTER, Event
from services.api.list_index_feed import ListIndexFeed
from services.common.memory_commit_log import MemoryCommitLog
from services.common.readmodels.list_index import RunListIndex, _copy, _Row
from services.common.readmodels.memory_store import MemoryReadModels, as_stored
from services.common.readmodels.projection import apply_to_run
from services.common.readmodels.reader import LIST_FIELDS
from services.common.readmodels.run_filter import Cursor, RunFilter
from services.common.readmodels.search_keys import parse_search_keys
from services.common.readmodels.store import Document
from services.common.settings import ApiSettings
from tests.support.workloads import Workload, fold_all, mixed_workload
from tests.unit.test_recorded_histories import HISTORIES

EVERYTHING = 1000
OLDEST = datetime.min.replace(tzinfo=UTC)


def projected_rows(events: list[Event]) -> list[Document]:
    """The list rows the projector would write for `events`, newest start first."""
    runs = fold_all(events).runs.values()
    rows = [{f: r[f] for f in LIST_FIELDS} for r in runs]
    return sorted(rows, key=lambda r: (r["start_time"], r["_id"]), reverse=True)


def listed(index: RunListIndex, flt: RunFilter | None = None) -> list[Document]:
    return index.list_runs(flt or RunFilter(), None, EVERYTHING)


def test_events_applied_to_the_index_give_the_projectors_rows() -> None:
    events = mixed_workload().all_events()
    index = RunListIndex()
    for event in events:
        index.apply(event)
    assert listed(index) == projected_rows(events)
    # Closing a run moved it in the end-time lists (open runs last, newest end first).
    by_end = sorted(
        projected_rows(events),
        key=lambda r: (r["end_time"] is not None, r["end_time"] or OLDEST, r["_id"]),
        reverse=True,
    )
    assert listed(index, RunFilter(sort_by="end_time")) == by_end
    # Every status change moved the run between the status lists.
    for status in ("RUNNING", "COMPLETED", "FAILED", "CANCELED", "TERMINATED"):
        expected = [r for r in projected_rows(events) if r["status"] == status]
        assert listed(index, RunFilter(statuses=(status,))) == expected, status


def test_events_applied_twice_change_nothing() -> None:
    events = mixed_workload().all_events()
    index = RunListIndex()
    for event in events + events:
        index.apply(event)
    assert listed(index) == projected_rows(events)
    for event in reversed(events):  # old events after newer ones move nothing back
        index.apply(event)
    assert listed(index) == projected_rows(events)


@pytest.mark.parametrize("seed", range(8))
def test_a_snapshot_and_the_events_after_an_earlier_offset_give_the_projectors_rows(
    seed: int,
) -> None:
    """The bootstrap: the store's rows as of some point (snapshot), then every event from
    an offset at or before that point (overlap), give the same rows as folding them all."""
    events = mixed_workload().all_events()
    rnd = random.Random(seed)
    snapshot_at = rnd.randrange(len(events) + 1)
    offset = rnd.randrange(snapshot_at + 1)
    index = RunListIndex()
    with index.loading():  # as the feed loads a snapshot: sorted once at the end
        for doc in fold_all(events[:snapshot_at]).runs.values():
            index.put(doc, only_if_newer=True)
    for event in events[offset:]:
        index.apply(event)
    assert listed(index) == projected_rows(events)


def test_a_snapshot_row_older_than_the_held_one_is_ignored() -> None:
    events = mixed_workload().all_events()
    index = RunListIndex()
    for event in events:
        index.apply(event)
    for doc in fold_all(events[:3]).runs.values():
        index.put(doc, only_if_newer=True)
    assert listed(index) == projected_rows(events)


def test_events_that_change_no_status_change_only_the_position_of_a_run() -> None:
    """The index moves a run's position in place for an event whose type is not in
    STATUS_AFTER, without folding it: that is only right while apply_to_run changes
    nothing else of a run for such an event. Every event of the recorded histories
    (activities, timers, markers, signals, children, updates, workflow tasks …) and of
    the mixed workload is held to it; and the index's rows and point reads equal the
    projector's after them."""
    streams = [mixed_workload().all_events()]
    for path in sorted(HISTORIES.glob("*.json")):
        for stream in json.loads(path.read_text())["streams"]:
            streams.append(EVENT_LIST_ADAPTER.validate_python(stream["events"]))
    moved_in_place = 0
    for events in streams:
        index = RunListIndex()
        runs: dict[str, Document] = {}
        for event in events:
            before = runs.get(event.run_id)
            after = apply_to_run(before, event)
            if after is not None:
                runs[event.run_id] = after
            index.apply(event)
            if before is None or after is None or event.type in STATUS_AFTER:
                continue
            moved_in_place += 1
            position_only = {"position", "seq", "event_count"}
            assert {k: v for k, v in after.items() if k not in position_only} == {
                k: v for k, v in before.items() if k not in position_only
            }, event.type
        assert listed(index) == projected_rows(events)
        for run_id, run in runs.items():
            point = index.run_document(run_id)
            assert point is not None
            assert point["position"] == run["position"]
            assert index.latest_run_document(run["execution_id"]) is not None
    assert moved_in_place > 40  # the histories hold plenty of such events


def test_seq_of_names_the_newest_event_a_row_reflects() -> None:
    w = mixed_workload()
    index = RunListIndex()
    for event in w.all_events():
        index.apply(event)
    run_id = w.run_id("a")
    assert index.seq_of(run_id) == max(e.seq for e in w.events["a"] if e.run_id == run_id)
    assert index.seq_of("no-such-run") is None


def test_a_gap_is_seen_only_where_an_event_is_missing() -> None:
    events = mixed_workload().all_events()
    index = RunListIndex()
    for event in events:  # in order: no gap, ever
        assert index.gap_before(event) is None, event
        index.apply(event)
    index = RunListIndex()
    w = mixed_workload()
    signal, complete = [e for e in w.events["a"] if e.type.name != "WORKFLOW_EXECUTION_STARTED"][:2]
    index.apply(w.events["a"][0])
    assert index.gap_before(complete) == 1  # the signal (seq 2) is missing
    assert index.gap_before(signal) is None
    unknown = w.events["b"][-1]  # the failure of a run whose start was never seen
    assert index.gap_before(unknown) == 0


def test_substring_filters_find_the_same_runs_by_scanning_texts_as_by_walking() -> None:
    """Past a few thousand runs, `search` and similar search keys scan every run's text
    first (joined, plus the texts changed since they were joined); the pages are those of a
    walk testing each row."""
    index = RunListIndex()
    memory = MemoryReadModels()

    def add(i: int) -> Document:
        w = Workload()
        w.start(
            f"e{i:05d}",
            workflow=f"wf-{i % 7}",
            display_name=f"Report {i}" if i % 3 == 0 else None,
            search_keys={"customer": f"Customer {i % 101}"} if i % 2 else None,
        )
        doc = fold_all(w.all_events()).runs[w.run_id(f"e{i:05d}")]
        memory.data["runs"][doc["_id"]] = as_stored(doc)
        return doc

    with index.loading():
        for i in range(6000):
            index.put(add(i))
    filters = (
        RunFilter(search="report 12"),
        RunFilter(search="E0001"),
        RunFilter(search="wf-3", order="asc"),
        RunFilter(search_keys=parse_search_keys(["customer:mer 10"])),
        RunFilter(search_keys=parse_search_keys(["customer:CUSTOMER 7"]), search="e00"),
    )
    for rounds in range(2):
        for flt in filters:
            expected = asyncio.run(memory.list_runs(flt, None, 60))
            assert index.list_runs(flt, None, 60) == expected, flt
            assert expected, flt
        # Runs added after the texts were joined are found too.
        for i in range(6000 + rounds * 30, 6030 + rounds * 30):
            index.put(add(i))


async def test_pages_by_end_time_put_open_runs_first_as_the_store_does() -> None:
    """Open runs sort first by end time (as MongoDB sorts null), though the index keeps
    them at the tail of its end-time lists: pages through runs opened and closed by
    events, both orders, small pages (cursors on open and on closed runs, and across),
    one status or several, equal the store's."""
    events = mixed_workload().all_events()
    index = RunListIndex()
    for event in events:
        index.apply(event)
    memory = MemoryReadModels()
    for doc in fold_all(events).runs.values():
        memory.data["runs"][doc["_id"]] = as_stored(doc)
    compared = 0
    for order in ("asc", "desc"):
        for statuses in ((), ("RUNNING", "COMPLETED"), ("RUNNING", "FAILED", "CANCELED")):
            flt = RunFilter(sort_by="end_time", order=order, statuses=statuses)
            after = None
            while True:
                expected = await memory.list_runs(flt, after, 2)
                assert index.list_runs(flt, after, 2) == expected, (flt, after)
                compared += len(expected)
                if len(expected) < 2:
                    break
                after = Cursor(expected[-1]["end_time"], expected[-1]["_id"])
    open_runs = [r for r in projected_rows(events) if r["end_time"] is None]
    assert open_runs and len(open_runs) < len(projected_rows(events))
    assert compared > 2 * len(open_runs)


@dataclasses.dataclass(frozen=True)
class Record:
    value: bytes | None
    partition: int = 0
    offset: int = 0


async def test_the_feed_lets_requests_run_while_it_folds_a_large_batch() -> None:
    w = Workload()
    for n in range(120):
        w.start(f"x{n}")
        w.signal(f"x{n}")
        w.complete(f"x{n}", result=n)
    events = w.all_events()
    records = [Record(e.model_dump_json().encode(), 0, i) for i, e in enumerate(events)]
    index = RunListIndex()
    feed = ListIndexFeed(ApiSettings(), cast(Any, None), MemoryCommitLog(), index)

    folded_when_a_request_ran: list[int] = []

    async def request() -> None:  # another coroutine of the API's loop, e.g. a point read
        while len(folded_when_a_request_ran) < 1000:
            folded_when_a_request_ran.append(feed.events_applied)
            await asyncio.sleep(0)

    other = asyncio.create_task(request())
    await asyncio.sleep(0)
    await feed.fold_records(records)
    other.cancel()
    # The request ran between slices of the batch, not only before or after it.
    assert any(0 < n < len(events) for n in folded_when_a_request_ran)
    assert listed(index) == projected_rows(events)


def test_a_row_copied_for_a_status_change_holds_every_field_of_the_row() -> None:
    index = RunListIndex()
    for event in mixed_workload().all_events():
        index.apply(event)
    row = next(iter(index._rows.values()))
    copied = _copy(row)
    assert copied is not row
    for name in _Row.__slots__:
        assert getattr(copied, name) == getattr(row, name), name


def _started_events() -> list[Event]:
    """Every WORKFLOW_EXECUTION_STARTED of the mixed workload and the recorded histories,
    and copies at the edges of a millisecond."""
    events = mixed_workload().all_events()
    for path in sorted(HISTORIES.glob("*.json")):
        for stream in json.loads(path.read_text())["streams"]:
            events += EVENT_LIST_ADAPTER.validate_python(stream["events"])
    starts = [e for e in events if e.type.value == "WORKFLOW_EXECUTION_STARTED"]
    edges = [
        starts[0].model_copy(update={"timestamp_ns": ns})
        for ns in (0, 999_999, 1_000_000, 1_796_546_311_167_999_999, 1_796_546_311_168_000_000)
    ]
    return starts + edges


def test_a_started_runs_row_is_the_row_of_the_projectors_document() -> None:
    # A new run's row is made straight from its STARTED event (no document between):
    # field for field what `_row(apply_to_run(None, event))` makes.
    starts = _started_events()
    assert len({e.run_id for e in starts}) > 10
    index = RunListIndex()
    for event in starts:
        direct = index._started_row(event)
        doc = apply_to_run(None, event)
        assert doc is not None
        via_doc = index._row(doc)
        for name in _Row.__slots__:
            assert getattr(direct, name) == getattr(via_doc, name), (name, event.event_id)


def test_a_start_folds_into_the_lists_as_the_projectors_document_does() -> None:
    events = mixed_workload().all_events()
    folded = RunListIndex()
    for event in events:
        folded.apply(event)
    # The same events with every new run's row made of the projector's document.
    via_docs = RunListIndex()
    for event in events:
        if event.type.value == "WORKFLOW_EXECUTION_STARTED" and event.run_id not in via_docs._rows:
            doc = apply_to_run(None, event)
            assert doc is not None
            via_docs._replace(None, via_docs._row(doc))
        else:
            via_docs.apply(event)
    assert folded._lists == via_docs._lists
    assert {d: s.texts for d, s in folded._texts.items()} == {
        d: s.texts for d, s in via_docs._texts.items()
    }
    assert folded._latest == via_docs._latest
    assert set(folded._rows) == set(via_docs._rows)
    for run_id, row in folded._rows.items():
        for name in _Row.__slots__:
            assert getattr(row, name) == getattr(via_docs._rows[run_id], name), name
