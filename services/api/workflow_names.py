"""Which workflow names a URL path may carry."""

from __future__ import annotations

from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError

from schemas.common import Identifier
from services.api import errors

# Path segments that name collections under /v1/workflows, never a workflow.
RESERVED_WORKFLOW_NAMES = frozenset(
    {
        "runs",
        "executions",
        "events",
        "registrations",
        "schedules",
        "deployments",
        "workers",
        "archive",
        "unarchive",
    }
)
_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def workflow_name_from_path(identifier: str) -> str:
    """A workflow name taken from a URL path, refused (422) if it could not be one."""
    try:
        name = _IDENTIFIER.validate_python(identifier)
    except ValidationError as exc:
        raise HTTPException(
            status_code=422,
            detail=[
                {"loc": ["path", "workflow_identifier"], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ],
        ) from exc
    if name in RESERVED_WORKFLOW_NAMES:
        raise errors.invalid(["path", "workflow_identifier"], f"{name!r} is a reserved name")
    return name
