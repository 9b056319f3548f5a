"""The workflow catalogue as the SDK sees it: what workers registered
(services/common/worker_registry.py) plus what users edited, shaped as the SDK's
`Workflow`, `WorkflowBasicDefinition` and `WorkflowRegistration` models.

A workflow's id is its name. Its tags are the union of the tags its code declares and
the tags users added; HTTP execute copies them into the run (`workflow_tags`), which is
what `list_runs(workflow_tags=…)` matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException

from schemas.registry import MISSED_HEARTBEATS
from services.api.http_docs import opaque_cursor, read_opaque_cursor
from services.common.catalogue_store import CatalogueStore

Document = dict[str, Any]

NAMESPACE = "default"


def is_live(worker: Document, now: datetime) -> bool:
    """A worker is live while its last heartbeat is younger than MISSED_HEARTBEATS
    intervals."""
    beat = worker.get("last_heartbeat")
    if not isinstance(beat, datetime):
        return False
    interval = float(worker.get("heartbeat_interval_seconds") or 10.0)
    return _aware(beat) >= now - timedelta(seconds=interval * MISSED_HEARTBEATS)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def live_workers(catalogue: CatalogueStore, deployment: str | None = None) -> list[Document]:
    now = datetime.now(UTC)
    return [w for w in await catalogue.workers(deployment) if is_live(w, now)]


def served(workers: list[Document]) -> dict[str, set[str]]:
    """Workflow name → deployments with a live worker serving it."""
    out: dict[str, set[str]] = {}
    for w in workers:
        for name in w.get("workflows") or ():
            out.setdefault(name, set()).add(str(w.get("deployment_name")))
    return out


def tags_of(doc: Document) -> list[str]:
    code = doc.get("code") or {}
    return sorted(set(code.get("tags") or ()) | set(doc.get("user_tags") or ()))


def display_name_of(doc: Document) -> str:
    edits = doc.get("edits") or {}
    code = doc.get("code") or {}
    return str(edits.get("display_name") or code.get("display_name") or doc["_id"])


def description_of(doc: Document) -> str | None:
    edits = doc.get("edits") or {}
    if "description" in edits:
        return edits["description"]  # type: ignore[no-any-return]
    return (doc.get("code") or {}).get("description")


def workflow_shape(doc: Document, active: bool | None = None) -> Document:
    """The SDK's `Workflow` (with `active`, its `WorkflowWithWorkerStatus`)."""
    edits = doc.get("edits") or {}
    out: Document = {
        "id": doc["_id"],
        "name": doc["_id"],
        "display_name": display_name_of(doc),
        "type": "code",
        "customer_id": NAMESPACE,
        "workspace_id": NAMESPACE,
        "description": description_of(doc),
        "shared_namespace": None,
        "available_in_chat_assistant": bool(edits.get("available_in_chat_assistant", False)),
        "is_technical": False,
        "archived": bool(doc.get("archived", False)),
        "tags": tags_of(doc),
    }
    if active is not None:
        out["active"] = active
    return out


def basic_shape(doc: Document) -> Document:
    """The SDK's `WorkflowBasicDefinition` (a `get_workflows` item)."""
    return {
        "id": doc["_id"],
        "name": doc["_id"],
        "display_name": display_name_of(doc),
        "archived": bool(doc.get("archived", False)),
        "description": description_of(doc),
        "metadata": {"shared_namespace": None},
        "tags": tags_of(doc),
    }


async def workflow_doc(catalogue: CatalogueStore, name: str) -> Document:
    """The workflow's catalogue document, or 404."""
    doc = await catalogue.workflow(name)
    if doc is None:
        raise HTTPException(
            status_code=404,
            detail=f"workflow_not_found: no worker registered a workflow named {name!r}",
        )
    return doc


@dataclass(frozen=True, slots=True)
class WorkflowFilter:
    statuses: tuple[str, ...] = ()
    available_in_chat_assistant: bool | None = None
    deployment_names: tuple[str, ...] = ()
    deployment_status: str | None = None
    archived: bool | None = None
    tags: tuple[str, ...] = ()
    search: str | None = None


async def list_workflows(
    catalogue: CatalogueStore, flt: WorkflowFilter, order: str, limit: int, cursor: str | None
) -> tuple[list[Document], str | None]:
    """One page of the catalogue sorted by (display_name, name); `next_cursor` is None on
    the last page (a full page always has one)."""
    docs = await catalogue.workflows()
    live = served(await live_workers(catalogue))
    with_status: set[str] | None = None
    if flt.statuses:
        with_status = await catalogue.workflow_names_with_runs(flt.statuses)
    rows = [d for d in docs if _matches(d, flt, live, with_status)]
    rows.sort(key=_sort_key, reverse=order == "desc")
    after = _read_cursor(cursor)
    if after is not None:
        rows = [
            r for r in rows if (_sort_key(r) > after if order == "asc" else _sort_key(r) < after)
        ]
    page = rows[:limit]
    token = _cursor(_sort_key(page[-1])) if len(rows) > limit else None
    return page, token


def _matches(
    doc: Document, flt: WorkflowFilter, live: dict[str, set[str]], with_status: set[str] | None
) -> bool:
    name = str(doc["_id"])
    deployments = set(doc.get("deployment_names") or ())
    if with_status is not None and name not in with_status:
        return False
    edits = doc.get("edits") or {}
    if flt.available_in_chat_assistant is not None and (
        bool(edits.get("available_in_chat_assistant", False)) != flt.available_in_chat_assistant
    ):
        return False
    if flt.deployment_names and not deployments & set(flt.deployment_names):
        return False
    if flt.deployment_status is not None and (name in live) != (flt.deployment_status == "active"):
        return False
    if flt.archived is not None and bool(doc.get("archived", False)) != flt.archived:
        return False
    if flt.tags and not set(flt.tags) <= set(tags_of(doc)):
        return False
    if flt.search:
        needle = flt.search.lower()
        hay = " ".join([name, display_name_of(doc), description_of(doc) or ""]).lower()
        if needle not in hay:
            return False
    return True


def _sort_key(doc: Document) -> tuple[str, str]:
    return (display_name_of(doc).lower(), str(doc["_id"]))


def _cursor(key: tuple[str, str]) -> str:
    return opaque_cursor(list(key))


def _read_cursor(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    first, second = read_opaque_cursor(cursor, 2)
    return (str(first), str(second))


async def admit(catalogue: CatalogueStore, name: str, allow_unregistered: bool) -> list[str]:
    """Whether HTTP execute may start `name`; the workflow's tags for the run.

    Unknown: 404 unless `allow_unregistered`; archived: 409 always."""
    doc = await catalogue.workflow_for_execute(name, remember_missing=allow_unregistered)
    if doc is None:
        if allow_unregistered:
            return []
        raise HTTPException(
            status_code=404,
            detail=(
                f"workflow_not_found: no worker registered a workflow named {name!r}, so no "
                "worker would run it (start a worker that serves it, or set "
                "RUNSTORE_API_ALLOW_UNREGISTERED=true)"
            ),
        )
    if doc.get("archived"):
        raise HTTPException(
            status_code=409,
            detail=f"workflow_archived: workflow {name!r} is archived; unarchive it to execute it",
        )
    return tags_of(doc)


# --- registrations ------------------------------------------------------------------


def registration_shape(reg: Document, wf: Document | None, live: dict[str, set[str]]) -> Document:
    """The SDK's `WorkflowRegistrationWithWorkerStatus` (extra `active` is ignored by
    `WorkflowRegistration`)."""
    name = str(reg["workflow_name"])
    deployment = str(reg["deployment_name"])
    active = deployment in live.get(name, set())
    return {
        "id": reg["_id"],
        "workflow_id": name,
        "definition": {
            "input_schema": reg.get("input_schema") or {},
            "output_schema": reg.get("output_schema"),
            "signals": [],
            "queries": [],
            "updates": [],
        },
        "deployment_id": deployment,
        "deployment_name": deployment,
        "task_queue": deployment,
        "active": active,
        "workflow": None if wf is None else workflow_shape(wf, active=name in live),
        "compatible_with_chat_assistant": False,
    }
