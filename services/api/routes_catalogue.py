"""The workflow catalogue: list, get, edit, archive, tag, registrations, and execute by
registration (docs/catalogue.md). Included after every router with fixed paths under
/v1/workflows, because `GET/PUT /v1/workflows/{workflow_identifier}` would take them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.api import errors
from services.api.catalogue import (
    WorkflowFilter,
    basic_shape,
    list_workflows,
    live_workers,
    registration_shape,
    served,
    workflow_doc,
    workflow_shape,
)
from services.api.command_sending import IdempotencyKey
from services.api.deps import Authorized, Catalogue, Wired
from services.api.http_docs import declared, json_body
from services.api.responses import EVERY_ROUTE
from services.api.responses import declared as declared_everywhere
from services.api.shapes import ExecuteRequest
from services.api.start_execution import start_execution
from services.api.workflow_names import RESERVED_WORKFLOW_NAMES

# Every route can answer these (auth, request limits and deadlines, failure budget).
router = APIRouter(tags=["catalogue"], responses=declared_everywhere(*EVERY_ROUTE))

Document = dict[str, Any]
Tag = Annotated[str, Field(min_length=1, max_length=128)]


class WorkflowUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    display_name: str | None = Field(default=None, max_length=512)
    description: str | None = Field(default=None, max_length=8192)
    available_in_chat_assistant: bool | None = None
    tags: list[Tag] | None = Field(default=None, max_length=50)


class WorkflowIds(BaseModel):
    workflow_ids: list[str] = Field(max_length=1000)


class TagsAdd(BaseModel):
    tags: list[Tag] = Field(max_length=50)


@router.get(
    "/v1/workflows/registrations",
    responses=declared(200, 400, 401, 422),
)
async def get_workflow_registrations(
    who: Authorized,
    catalogue: Catalogue,
    workflow_id: str | None = None,
    task_queue: str | None = None,
    active_only: bool = False,
    include_shared: bool = True,
    workflow_name: str | None = None,
    workflow_search: str | None = None,
    archived: bool | None = None,
    with_workflow: bool = False,
    available_in_chat_assistant: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> Response:
    """Registrations (workflow, deployment, version), by id; `next_cursor` is the last id
    of a full page."""
    regs = await catalogue.registrations()
    workflows = {d["_id"]: d for d in await catalogue.workflows()}
    live = served(await live_workers(catalogue))
    rows = []
    for reg in sorted(regs, key=lambda r: str(r["_id"])):
        name = str(reg["workflow_name"])
        wf = workflows.get(name)
        shape = registration_shape(reg, wf, live)
        edits = (wf or {}).get("edits") or {}
        if (
            (workflow_id and name != workflow_id)
            or (workflow_name and name != workflow_name)
            or (task_queue and reg["deployment_name"] != task_queue)
            or (active_only and not shape["active"])
            or (archived is not None and bool((wf or {}).get("archived")) != archived)
            or (
                available_in_chat_assistant is not None
                and bool(edits.get("available_in_chat_assistant")) != available_in_chat_assistant
            )
            or (workflow_search and workflow_search.lower() not in name.lower())
            or (cursor and str(reg["_id"]) <= cursor)
        ):
            continue
        if not with_workflow:
            shape["workflow"] = None
        rows.append(shape)
    page = rows[:limit]
    next_cursor = str(page[-1]["id"]) if len(rows) > limit else None
    return json_body(
        {"workflow_registrations": page, "workflow_versions": page, "next_cursor": next_cursor}
    )


@router.get(
    "/v1/workflows/registrations/{workflow_registration_id}",
    responses=declared(200, 401, 404, 422),
)
async def get_workflow_registration(
    who: Authorized,
    catalogue: Catalogue,
    workflow_registration_id: str,
    with_workflow: bool = False,
    include_shared: bool = True,
) -> Response:
    reg = await _registration(catalogue, workflow_registration_id)
    wf = await catalogue.workflow(str(reg["workflow_name"]))
    shape = registration_shape(reg, wf, served(await live_workers(catalogue)))
    if not with_workflow:
        shape["workflow"] = None
    return json_body({"workflow_registration": shape, "workflow_version": shape})


@router.post(
    "/v1/workflows/registrations/{workflow_registration_id}/execute",
    responses=declared(200, 401, 404, 409, 422, 503, 504),
)
async def execute_workflow_registration(
    who: Authorized,
    api: Wired,
    body: ExecuteRequest,
    workflow_registration_id: str,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Execute the registration's workflow on the registration's deployment (unless the
    body names another)."""
    reg = await _registration(api.catalogue, workflow_registration_id)
    if not (body.deployment_name or body.task_queue):
        body = body.model_copy(update={"deployment_name": reg["deployment_name"]})
    answer = await start_execution(who, api, body, str(reg["workflow_name"]), idempotency_key)
    return Response(answer, media_type="application/json")


async def _registration(catalogue: Catalogue, registration_id: str) -> Document:
    reg = await catalogue.registration(registration_id)
    if reg is None:
        raise HTTPException(
            status_code=404, detail=f"workflow registration {registration_id!r} not found"
        )
    return reg


@router.get("/v1/workflows", responses=declared(200, 400, 401, 422))
async def get_workflows(
    who: Authorized,
    catalogue: Catalogue,
    status: Annotated[list[str] | None, Query()] = None,
    include_shared: bool = True,
    available_in_chat_assistant: bool | None = None,
    deployment_name: Annotated[list[str] | None, Query()] = None,
    deployment_status: Literal["active", "inactive"] | None = None,
    archived: bool | None = None,
    tags: Annotated[list[str] | None, Query()] = None,
    sort_by: Literal["display_name"] = "display_name",
    order: Literal["asc", "desc"] = "asc",
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    active_only: bool = False,
    search: str | None = None,
) -> Response:
    """`status`: workflows with at least one run in one of these statuses;
    `active_only` (deprecated) = `deployment_status=active`."""
    flt = WorkflowFilter(
        statuses=tuple(status or ()),
        available_in_chat_assistant=available_in_chat_assistant,
        deployment_names=tuple(deployment_name or ()),
        deployment_status=deployment_status or ("active" if active_only else None),
        archived=archived,
        tags=tuple(tags or ()),
        search=search or None,
    )
    page, next_cursor = await list_workflows(catalogue, flt, order, limit, cursor)
    return json_body({"workflows": [basic_shape(d) for d in page], "next_cursor": next_cursor})


@router.put("/v1/workflows/archive", responses=declared(200, 401, 422))
async def bulk_archive_workflows(
    who: Authorized, catalogue: Catalogue, body: WorkflowIds
) -> Response:
    done, errored = await _set_archived_many(catalogue, body.workflow_ids, True)
    return json_body({"archived": done, "errored": errored})


@router.put("/v1/workflows/unarchive", responses=declared(200, 401, 422))
async def bulk_unarchive_workflows(
    who: Authorized, catalogue: Catalogue, body: WorkflowIds
) -> Response:
    done, errored = await _set_archived_many(catalogue, body.workflow_ids, False)
    return json_body({"unarchived": done, "errored": errored})


@router.get("/v1/workflows/{workflow_identifier}", responses=declared(200, 401, 404))
async def get_workflow(who: Authorized, catalogue: Catalogue, workflow_identifier: str) -> Response:
    doc = await workflow_doc(catalogue, _name(workflow_identifier))
    active = workflow_identifier in served(await live_workers(catalogue))
    return json_body({"workflow": workflow_shape(doc, active=active)})


@router.put("/v1/workflows/{workflow_identifier}", responses=declared(200, 401, 404, 422))
async def update_workflow(
    who: Authorized, catalogue: Catalogue, workflow_identifier: str, body: WorkflowUpdate
) -> Response:
    """Given fields replace what the code registered; `tags` replaces the user-added
    tags (the code's own tags always stay)."""
    name = _name(workflow_identifier)
    await workflow_doc(catalogue, name)
    update: Document = {}
    for field in ("display_name", "description", "available_in_chat_assistant"):
        value = getattr(body, field)
        if value is not None:
            update[f"edits.{field}"] = value
    if body.tags is not None:
        update["user_tags"] = sorted(set(body.tags))
    await catalogue.edit_workflow(name, update)
    return json_body({"workflow": workflow_shape(await workflow_doc(catalogue, name))})


@router.put("/v1/workflows/{workflow_identifier}/archive", responses=declared(200, 401, 404))
async def archive_workflow(
    who: Authorized, catalogue: Catalogue, workflow_identifier: str
) -> Response:
    return json_body({"workflow": await _set_archived(catalogue, _name(workflow_identifier), True)})


@router.put("/v1/workflows/{workflow_identifier}/unarchive", responses=declared(200, 401, 404))
async def unarchive_workflow(
    who: Authorized, catalogue: Catalogue, workflow_identifier: str
) -> Response:
    return json_body(
        {"workflow": await _set_archived(catalogue, _name(workflow_identifier), False)}
    )


@router.post(
    "/v1/workflows/{workflow_identifier}/tags",
    status_code=204,
    responses=declared(204, 401, 404, 422),
)
async def add_workflow_tags(
    who: Authorized,
    catalogue: Catalogue,
    workflow_identifier: str,
    body: Annotated[TagsAdd, Body()],
) -> Response:
    """Adds user tags (existing ones stay); runs started over HTTP from now on carry
    them (`list_runs(workflow_tags=…)`)."""
    name = _name(workflow_identifier)
    doc = await workflow_doc(catalogue, name)
    tags = sorted(set(doc.get("user_tags") or ()) | set(body.tags))
    if len(tags) > 50:
        raise errors.invalid(["body", "tags"], "a workflow has at most 50 tags")
    await catalogue.edit_workflow(name, {"user_tags": tags})
    return Response(status_code=204)


def _name(identifier: str) -> str:
    if identifier in RESERVED_WORKFLOW_NAMES:
        raise HTTPException(status_code=404, detail=f"{identifier!r} is not a workflow")
    return identifier


async def _set_archived(catalogue: Catalogue, name: str, archived: bool) -> Document:
    await workflow_doc(catalogue, name)
    await catalogue.edit_workflow(name, {"archived": archived})
    return workflow_shape(await workflow_doc(catalogue, name))


async def _set_archived_many(
    catalogue: Catalogue, names: list[str], archived: bool
) -> tuple[list[Document], list[Document]]:
    done: list[Document] = []
    errored: list[Document] = []
    for name in dict.fromkeys(names):
        try:
            done.append(await _set_archived(catalogue, name, archived))
        except HTTPException as exc:
            errored.append({"workflow_id": name, "message": str(exc.detail), "workflow": None})
    return done, errored
