"""Deployments (named groups of workers: the task route) and their workers and logs
(docs/catalogue.md). Runstore hosts no code, so a deployment is what workers create by
registering, or what `create_deployment` declares ahead of them; `stop` pauses its
workers' task consumption (they read the flag on their next heartbeat), `start` resumes
it, `restart` asks them to reconnect. The hosted-code operations answer 501."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Identifier
from services.api.catalogue import is_live
from services.api.deps import Authorized, Catalogue
from services.api.http_docs import declared, json_body
from services.api.responses import EVERY_ROUTE
from services.api.responses import declared as declared_everywhere

# Every route can answer these (auth, request limits and deadlines, failure budget).
router = APIRouter(tags=["deployments"], responses=declared_everywhere(*EVERY_ROUTE))

Document = dict[str, Any]
HOSTED_ONLY = (
    "not_supported: Runstore runs no hosted code; deployments are groups of self-run "
    "workers (`runstore worker`), so there is no {what} (docs/catalogue.md)"
)


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Identifier
    spec: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, Any] | None = None
    hardened: bool = False


class DeploymentPatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    spec: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None


def _worker_shape(w: Document, now: datetime) -> Document:
    beat = w.get("last_heartbeat") or w.get("created_at")
    return {
        "name": w["_id"],
        "created_at": w.get("created_at") or beat,
        "last_heartbeat": beat,
        "updated_at": beat,
        "is_active": is_live(w, now),
        "location": {"location_type": "local", "k8s_cluster": None, "k8s_namespace": None},
        "host": w.get("host"),
        "pid": w.get("pid"),
        "version": w.get("version"),
        "workflows": w.get("workflows") or [],
    }


def _deployment_shape(d: Document, workers: list[Document], now: datetime) -> Document:
    live = [w for w in workers if is_live(w, now)]
    created = d.get("created_at") or now
    return {
        "id": d["_id"],
        "name": d["_id"],
        "is_active": bool(live) and not d.get("stopped", False),
        "created_at": created,
        "last_heartbeat": d.get("last_heartbeat") or created,
        "updated_at": d.get("updated_at") or created,
        "is_hardened": False,
        "owner": d.get("created_by"),
        "location": {"location_type": "local", "k8s_cluster": None, "k8s_namespace": None},
        "worker_count": len(workers),
        "active_worker_count": len(live),
        "locations": ["local"],
        "managed": None,
        "stopped": bool(d.get("stopped", False)),
        "restart_generation": int(d.get("restart_generation", 0)),
    }


def _managed_shape(d: Document, live_count: int) -> Document:
    """The SDK's `ManagedDeploymentResponse` for a group of self-run workers."""
    spec = d.get("spec") or {}
    created = d.get("created_at") or datetime.now(UTC)
    stopped = bool(d.get("stopped", False))
    return {
        "service_id": d["_id"],
        "name": d["_id"],
        "spec": {
            "github_url": str(spec.get("github_url") or ""),
            "backend_spec": {"type": "runstore_workers"},
            "revision": spec.get("revision"),
            "restarted_at": d.get("restarted_at"),
        },
        "resources": {"replicas": live_count},
        "status": {
            "phase": "stopped" if stopped else ("running" if live_count else "waiting_for_workers"),
            "available_replicas": live_count,
            "ready_replicas": live_count,
            "message": None,
        },
        "created_at": created,
        "updated_at": d.get("updated_at") or created,
        "stopped": stopped,
        "created_by": d.get("created_by"),
        "is_hardened": False,
    }


async def existing_deployment(catalogue: Catalogue, name: str) -> Document:
    """The deployment, or 404."""
    doc = await catalogue.deployment(name)
    if doc is None:
        raise HTTPException(status_code=404, detail=f"deployment {name!r} not found")
    return doc


async def _workers(catalogue: Catalogue, name: str) -> list[Document]:
    return await catalogue.workers(name)


async def _accepted(catalogue: Catalogue, name: str) -> Response:
    doc = await existing_deployment(catalogue, name)
    now = datetime.now(UTC)
    live = [w for w in await _workers(catalogue, name) if is_live(w, now)]
    return json_body(_managed_shape(doc, len(live)), status_code=202)


@router.get("/v1/workflows/deployments", responses=declared(200, 400, 401, 422))
async def list_deployments(
    who: Authorized,
    catalogue: Catalogue,
    active_only: bool = True,
    workflow_name: str | None = None,
    created_by: str | None = None,
    owner: str | None = None,
    search: str | None = None,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> Response:
    """By creation time (then name); `cursor` is the last name of the previous page."""
    now = datetime.now(UTC)
    docs = await catalogue.deployments()
    workers = await catalogue.workers()
    serving: set[str] | None = None
    if workflow_name:
        wf = await catalogue.workflow(workflow_name)
        serving = set((wf or {}).get("deployment_names") or ())
    shapes = []
    for d in docs:
        shape = _deployment_shape(
            d, [w for w in workers if w.get("deployment_name") == d["_id"]], now
        )
        if (
            (active_only and not shape["is_active"])
            or (serving is not None and d["_id"] not in serving)
            or ((created_by or owner) and d.get("created_by") not in (created_by, owner))
            or (search and search.lower() not in str(d["_id"]).lower())
        ):
            continue
        shapes.append(shape)
    shapes.sort(key=lambda s: (s["created_at"], s["name"]), reverse=order == "desc")
    if cursor:
        names = [s["name"] for s in shapes]
        if cursor not in names:
            raise HTTPException(status_code=400, detail="cursor is not one this API issued")
        shapes = shapes[names.index(cursor) + 1 :]
    shown = shapes[:limit]
    next_cursor = shown[-1]["name"] if len(shapes) > limit else None
    return json_body({"deployments": shown, "next_cursor": next_cursor, "workspace_id": "default"})


@router.post("/v1/workflows/deployments", status_code=202, responses=declared(202, 401, 409, 422))
async def create_deployment(
    who: Authorized, catalogue: Catalogue, body: DeploymentCreate
) -> Response:
    """Declares a deployment before its workers register (409 if it exists)."""
    if await catalogue.deployment(body.name) is not None:
        raise HTTPException(status_code=409, detail=f"deployment {body.name!r} already exists")
    now = datetime.now(UTC)
    await catalogue.create_deployment(
        {
            "_id": body.name,
            "created_at": now,
            "updated_at": now,
            "stopped": False,
            "restart_generation": 0,
            "spec": body.spec,
            "created_by": who.user_id,
        }
    )
    return await _accepted(catalogue, body.name)


@router.get("/v1/workflows/deployments/{name}", responses=declared(200, 401, 404))
async def get_deployment(who: Authorized, catalogue: Catalogue, name: str) -> Response:
    doc = await existing_deployment(catalogue, name)
    now = datetime.now(UTC)
    workers = await _workers(catalogue, name)
    shape = _deployment_shape(doc, workers, now)
    shape["workers"] = [_worker_shape(w, now) for w in workers if is_live(w, now)]
    return json_body(shape)


@router.patch(
    "/v1/workflows/deployments/{name}", status_code=202, responses=declared(202, 401, 404, 422)
)
async def update_deployment(
    who: Authorized, catalogue: Catalogue, name: str, body: DeploymentPatch
) -> Response:
    await existing_deployment(catalogue, name)
    await catalogue.edit_deployment(name, {} if body.spec is None else {"spec": body.spec})
    return await _accepted(catalogue, name)


@router.delete(
    "/v1/workflows/deployments/{name}", status_code=202, responses=declared(202, 401, 404, 409)
)
async def delete_deployment(who: Authorized, catalogue: Catalogue, name: str) -> Response:
    """Only a deployment without live workers (409 otherwise: stop them first)."""
    doc = await existing_deployment(catalogue, name)
    now = datetime.now(UTC)
    if any(is_live(w, now) for w in await _workers(catalogue, name)):
        raise HTTPException(
            status_code=409,
            detail=f"deployment {name!r} has live workers; stop them before deleting it",
        )
    await catalogue.delete_deployment(name)
    return json_body(_managed_shape(doc, 0), status_code=202)


async def _set_state(
    catalogue: Catalogue, name: str, fields: Document, increments: Document | None = None
) -> Response:
    await existing_deployment(catalogue, name)
    await catalogue.edit_deployment(name, fields, increments)
    return await _accepted(catalogue, name)


@router.post(
    "/v1/workflows/deployments/{name}/start", status_code=202, responses=declared(202, 401, 404)
)
async def start_deployment(who: Authorized, catalogue: Catalogue, name: str) -> Response:
    return await _set_state(catalogue, name, {"stopped": False})


@router.post(
    "/v1/workflows/deployments/{name}/stop", status_code=202, responses=declared(202, 401, 404)
)
async def stop_deployment(who: Authorized, catalogue: Catalogue, name: str) -> Response:
    return await _set_state(catalogue, name, {"stopped": True})


@router.post(
    "/v1/workflows/deployments/{name}/restart", status_code=202, responses=declared(202, 401, 404)
)
async def restart_deployment(who: Authorized, catalogue: Catalogue, name: str) -> Response:
    # One writer at a time is the API instance handling the request; two concurrent
    # restarts both increment, which asks workers to reconnect, as both wanted.
    return await _set_state(
        catalogue,
        name,
        {"restarted_at": datetime.now(UTC).isoformat()},
        {"restart_generation": 1},
    )


@router.get("/v1/workflows/deployments/{name}/workers", responses=declared(200, 400, 401, 404))
async def list_deployment_workers(
    who: Authorized,
    catalogue: Catalogue,
    name: str,
    worker_status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> Response:
    """Live workers (heartbeat within 3 intervals), by id; `worker_status=inactive` lists
    the silent ones still on record, `all` both."""
    await existing_deployment(catalogue, name)
    now = datetime.now(UTC)
    shapes = sorted(
        (_worker_shape(w, now) for w in await _workers(catalogue, name)),
        key=lambda s: str(s["name"]),
    )
    wanted = (worker_status or "active").lower()
    if wanted != "all":
        shapes = [s for s in shapes if s["is_active"] == (wanted != "inactive")]
    if cursor:
        shapes = [s for s in shapes if str(s["name"]) > cursor]
    shown = shapes[:limit]
    next_cursor = str(shown[-1]["name"]) if len(shapes) > limit else None
    return json_body({"workers": shown, "next_cursor": next_cursor})


@router.get("/v1/workflows/deployments/{name}/archive", responses=declared(401, 404, 501))
async def get_deployment_archive(who: Authorized, catalogue: Catalogue, name: str) -> Response:
    await existing_deployment(catalogue, name)
    raise HTTPException(status_code=501, detail=HOSTED_ONLY.format(what="code archive"))


@router.post(
    "/v1/workflows/deployments/{deployment_id}/unharden", responses=declared(401, 404, 501)
)
async def unharden_deployment(
    who: Authorized, catalogue: Catalogue, deployment_id: str, workspace_id: str | None = None
) -> Response:
    await existing_deployment(catalogue, deployment_id)
    raise HTTPException(status_code=501, detail=HOSTED_ONLY.format(what="hardening to undo"))
