"""How a commit is stored (services/common/commit_log.py): flat fields at the top level, and
a body that leaves out what the document or the rest of the body says already. Every
commit of the engine's corpus round-trips losslessly (tests/unit/test_engine_golden_outputs.py
renders commits after `commit_to_doc` → `commit_from_doc`); these tests pin the layout
itself and the cases the corpus does not make."""

from __future__ import annotations

import json
from typing import Any

from schemas.commits import Commit, RejectedCommand
from schemas.common import Payload
from schemas.outcomes import RejectionCode
from services.common.commit_log import _COMMON, _derived, commit_from_doc, commit_to_doc
from tests.support.commits import make_commit
from tests.support.engine_corpus import corpus_commits, whole_body_doc


def _engine_like(seq: int = 2) -> Commit:
    """A commit as the engine makes it: a full state snapshot whose ids are the commit's,
    events whose ids, workflow and root are the commit's and the state's."""
    commit = make_commit("e1", seq, run_id="r1", with_source=True)
    state = {
        "execution_id": "e1",
        "seq": seq,
        "run_id": "r1",
        "status": "RUNNING",
        "workflow_name": "wf",
        "root_execution_id": "e1",
    }
    return commit.model_copy(update={"state": state})


def _rejected(message: str) -> RejectedCommand:
    """A signal refused because its execution is closed, with `message`."""
    return RejectedCommand(
        command_id="x",
        command_type="SignalExecution",
        offset=3,
        code=RejectionCode.EXECUTION_ALREADY_CLOSED,
        message=message,
    )


def test_the_body_leaves_out_what_the_document_and_the_state_say() -> None:
    commit = _engine_like()
    doc = commit_to_doc(commit)
    # The execution and the seq are in `_id` only: FerretDB's cost grows with each
    # top-level field.
    assert {k: v for k, v in doc.items() if k != "body"} == {
        "_id": "e1:000000000002",
        "command_id": "cmd-e1-2",
        "committed_at": commit.committed_at,
    }
    body = json.loads(doc["body"])
    # `rejected` empty: left out.
    assert list(body) == ["command_type", "run_id", "events", "committed_at", "source", "state"]
    assert (body["command_type"], body["run_id"]) == (commit.command_type, "r1")
    assert list(body["state"]) == ["status", "workflow_name", "root_execution_id"]
    assert set(body["events"][0]) == {
        "index",
        "event_number",
        "timestamp_ns",
        "type",
        "attributes",
    }
    assert commit_from_doc(doc) == commit
    # The snapshot's fields come back in their order (it may be dumped again).
    assert list(commit_from_doc(doc).state) == list(commit.state)
    whole = whole_body_doc(commit)["body"]
    assert len(doc["body"]) < 0.7 * len(whole)


def test_fields_that_differ_from_the_commits_are_kept() -> None:
    commit = _engine_like()
    event = commit.events[0].model_copy(
        update={
            "run_id": "an-older-run",
            "event_id": "custom",
            "root_execution_id": "root",
            "command_id": "other-command",
        }
    )
    rejected = _rejected("no")
    state = {"seq": 2, "execution_id": "e1", "run_id": "r1"}  # not in the snapshot's order
    odd = commit.model_copy(update={"events": [event], "rejected": [rejected], "state": state})
    doc = commit_to_doc(odd)
    body: dict[str, Any] = json.loads(doc["body"])
    kept = body["events"][0]
    assert (kept["run_id"], kept["event_id"], kept["root_execution_id"]) == (
        "an-older-run",
        "custom",
        "root",
    )
    assert kept["command_id"] == "other-command"
    assert body["state"] == state and body["rejected"][0]["command_id"] == "x"
    assert commit_from_doc(doc) == odd


def test_a_state_without_the_commits_ids_is_stored_as_it_is() -> None:
    for state in ({"seq": 2}, {}):
        odd = _engine_like().model_copy(update={"state": state})
        doc = commit_to_doc(odd)
        assert commit_from_doc(doc) == odd
        assert commit_from_doc(doc).state == state


def test_a_commit_stored_whole_by_an_older_engine_still_reads() -> None:
    commit = _engine_like()
    assert commit_from_doc(whole_body_doc(commit)) == commit


def test_with_compact_off_an_older_reader_reads_the_body_and_so_does_this_one() -> None:
    # RUNSTORE_ENGINE_COMPACT_COMMITS=false during a rolling upgrade: readers from before the
    # compact body parse the body as the whole commit (`Commit.model_validate_json`).
    commit = _engine_like()
    doc = commit_to_doc(commit, compact=False)
    assert Commit.model_validate_json(doc["body"]) == commit  # the older readers' parse
    assert commit_from_doc(doc) == commit
    # …and finds the ids at the top level, where they read them.
    assert {k: v for k, v in doc.items() if k != "body"} == {
        "_id": "e1:000000000002",
        "execution_id": "e1",
        "seq": 2,
        "command_id": "cmd-e1-2",
        "command_type": commit.command_type,
        "run_id": "r1",
        "committed_at": commit.committed_at,
    }
    compact = commit_to_doc(commit)
    assert len(compact["body"]) < len(doc["body"])


def test_a_compact_body_with_the_ids_at_the_top_level_still_reads() -> None:
    # The layout engines wrote on 2026-12-06 before the lean one: the same body without
    # the command type and the run id, and every id at the top level.
    commit = _engine_like()
    lean = commit_to_doc(commit)
    body = json.loads(lean["body"])
    del body["command_type"], body["run_id"]
    # Its top-level fields are those of the layout every version reads (pinned above).
    older = {
        **commit_to_doc(commit, compact=False),
        "body": json.dumps(body, separators=(",", ":")),
    }
    assert commit_from_doc(older) == commit


def test_an_execution_id_with_colons_reads_back_from_the_id() -> None:
    commit = make_commit("a:b:000000000001", 3, run_id="r1", with_source=True)
    state = {"execution_id": "a:b:000000000001", "seq": 3, "run_id": "r1", "status": "RUNNING"}
    commit = commit.model_copy(update={"state": state})
    assert commit_from_doc(commit_to_doc(commit)) == commit


def _body_by_pydantic(commit: Commit) -> str:
    """The compact body as pydantic's own dump with the body's exclusions makes it (how
    `commit_to_doc` wrote every body before the fourteenth session)."""
    if "execution_id" not in commit.state:
        return commit.model_dump_json(exclude_none=True)
    return commit.model_dump_json(exclude_none=True, exclude=_derived(commit))


def _odd_commits() -> list[Commit]:
    """What the engine's corpus does not make: no source, rejected commands, an event
    with a parent, the state's head out of order, non-ASCII and float values."""
    commit = _engine_like()
    rejected = _rejected('nö "quoted"\n')
    child = commit.events[0].model_copy(update={"parent_execution_id": "parent"})
    started = make_commit("e1", 1, run_id="r1").events[0]
    attributes = started.attributes.model_copy(  # type: ignore[union-attr]
        update={"input": Payload(value={"é": [1.5, None, 1e300, "\u2028"]}), "display_name": "x"}
    )
    first = _engine_like(1).model_copy(
        update={"events": [started.model_copy(update={"attributes": attributes})]}
    )
    return [
        commit.model_copy(update={"source": None}),
        commit.model_copy(update={"rejected": [rejected]}),
        commit.model_copy(update={"events": [child]}),
        commit.model_copy(update={"state": {"seq": 2, "execution_id": "e1", "run_id": "r1"}}),
        commit.model_copy(update={"state": {**commit.state, "f": 0.1, "n": None, "u": "ü"}}),
        first,
        first.model_copy(update={"rejected": [rejected, rejected], "source": None}),
    ]


def test_every_body_is_the_bytes_pydantic_dumps_with_the_exclusions() -> None:
    # The engine's commits are dumped from plain dicts (`_common_body`): the stored bytes
    # must stay those older engines wrote and read (a rolling upgrade, a rollback).
    commits = [*corpus_commits(), *_odd_commits()]
    plain = 0
    for commit in commits:
        body = commit_to_doc(commit)["body"]
        assert body == _body_by_pydantic(commit), commit.doc_id
        assert commit_from_doc(commit_to_doc(commit)) == commit
        plain += "execution_id" in commit.state and _derived(commit) in _COMMON.values()
    # The plain-dict path was taken, with and without rejections and sources.
    assert plain > 250
    assert any(c.rejected for c in commits) and any(c.source is None for c in commits)
