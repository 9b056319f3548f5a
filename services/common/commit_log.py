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
    doc = commit.model_dump(mode="json")
    doc["_id"] = commit.doc_id
    doc["committed_at"] = commit.committed_at  # a BSON date, not a string
    return doc


def commit_from_doc(doc: Document) -> Commit:
    doc = dict(doc)
    doc.pop("_id", None)
    return Commit.model_validate(doc)


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
