"""The port the API reads and edits the catalogue through: workflows, registrations,
deployments and workers (written by workers, services/common/worker_registry.py), and
the log records workers ship. Adapters: `MongoCatalogue` (mongo_catalogue.py) and
`MemoryCatalogue` (memory_catalogue.py), both held to tests/contract/test_catalogue_store.py.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, Protocol

Document = dict[str, Any]

ADMISSION_TTL_SECONDS = 1.0
"""How long an API instance reuses a workflow's catalogue document for execute (the
hot path): an archive or tag edit made on another instance applies within this time."""


class CatalogueStore(Protocol):
    async def workflow(self, name: str) -> Document | None:
        """A workflow's document by name."""

    async def workflows(self) -> list[Document]:
        """Every workflow (in no particular order)."""

    async def edit_workflow(self, name: str, fields: Document) -> None:
        """Set `fields` (dotted paths reach into sub-documents) and `updated_at` on an
        existing workflow; nothing for an unknown one."""

    async def workflow_for_execute(self, name: str, remember_missing: bool) -> Document | None:
        """`workflow(name)`, reused for ADMISSION_TTL_SECONDS unless this instance edited
        it since. A miss is reused only with `remember_missing`."""

    async def workflow_names_with_runs(self, statuses: Collection[str]) -> set[str]:
        """Names of the workflows that have a run in one of `statuses`."""

    async def registrations(self) -> list[Document]:
        """Every registration (in no particular order)."""

    async def registration(self, registration_id: str) -> Document | None: ...

    async def deployments(self) -> list[Document]:
        """Every deployment (in no particular order)."""

    async def deployment(self, name: str) -> Document | None: ...

    async def create_deployment(self, doc: Document) -> None:
        """Insert a deployment; an error if its `_id` exists."""

    async def edit_deployment(
        self, name: str, fields: Document, increments: Document | None = None
    ) -> None:
        """Set `fields` and `updated_at`, and add `increments` (numbers)."""

    async def delete_deployment(self, name: str) -> None: ...

    async def workers(self, deployment: str | None = None) -> list[Document]:
        """Every worker on record (of one deployment), live or not, in no particular order."""

    async def execution_log_chunks(self, execution_id: str, first: int = 0) -> list[Document]:
        """An execution's log chunks from number `first` on, until one is missing."""

    async def deployment_log_chunks(
        self, deployment: str, shipped_from: datetime | None, limit: int
    ) -> list[Document]:
        """Up to `limit` log chunks of a deployment's workers shipped at or after
        `shipped_from`, ordered by (`shipped_at`, `_id`)."""
