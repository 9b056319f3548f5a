"""Reading and writing commit documents: shared by the engine's event store (which
appends) and the API (which folds commits the projector has not applied yet)."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from schemas.commits import Commit, commit_id

Document = dict[str, Any]

COMMITS = "commits"
RUN_LOCATORS = "run_locators"
"""`{_id: run_id, execution_id}`: written by the engine before the commit that opens a run,
so a run the projector has not written yet is found by one `_id` read (and an unknown run
id is a miss, not a scan)."""


def commit_to_doc(commit: Commit) -> Document:
    """A commit as stored: the fields indexes and operators use at the top level, and the
    whole commit as JSON text in `body`.

    The body is opaque to the database on purpose (as event stores keep event payloads):
    nothing queries inside it, and a document of a few flat fields is several times
    cheaper to insert and read than the nested one (FerretDB converts and indexes every
    nested field; see bench/engine_throughput.py). Fields that are None are left out of
    the body (they read back as their default, None): about a third fewer bytes per
    commit, for the engine to encode and the database to store.
    """
    return {
        "_id": commit.doc_id,
        "execution_id": commit.execution_id,
        "seq": commit.seq,
        "command_id": commit.command_id,
        "command_type": commit.command_type,
        "run_id": commit.run_id,
        "committed_at": commit.committed_at,  # a BSON date, for operators' queries
        "body": commit.model_dump_json(exclude_none=True),
    }


def commit_from_doc(doc: Document) -> Commit:
    body = doc.get("body")
    if isinstance(body, str):
        return Commit.model_validate_json(body)
    # Written before bodies existed: the commit's fields at the top level.
    return Commit.model_validate({k: v for k, v in doc.items() if k != "_id"})


async def read_commit(
    commits: AsyncCollection[Document], execution_id: str, seq: int
) -> Commit | None:
    doc = await commits.find_one({"_id": commit_id(execution_id, seq)})
    return commit_from_doc(doc) if doc else None


async def read_commits_after(
    commits: AsyncCollection[Document], execution_id: str, after_seq: int
) -> list[Commit]:
    """Commits after `after_seq`, probing `_id`s until one is missing."""
    found: list[Commit] = []
    while (c := await read_commit(commits, execution_id, after_seq + len(found) + 1)) is not None:
        found.append(c)
    return found


async def locate_run(db: AsyncDatabase[Document], run_id: str) -> str | None:
    """The execution a run belongs to, if the engine has opened (or is opening) it."""
    doc = await db[RUN_LOCATORS].find_one({"_id": run_id})
    return str(doc["execution_id"]) if doc else None
