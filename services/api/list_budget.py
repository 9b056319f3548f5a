"""A bound on the run-list queries an API instance runs, so that a slow list cannot take
the store from the point reads.

A list is the only read that is not an `_id` lookup. On the local FerretDB it is a scan
and an in-memory sort of the whole `runs` collection (seconds at 10^4 to 10^5 runs,
docs/soak.md); a client that gives up does not stop it, and the scans of several clients
pile up on the same store as every point read and every write. So each API instance runs
at most `concurrency` list queries at once, and each list request gets `seconds` in all
(waiting for its turn included). The time left is handed to the server as `maxTimeMS`
(pymongo's `timeout`), so a query past its budget stops on the server as well; the request
then answers 503 with `Retry-After` (`ListBudgetExceeded`, mapped in app.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pymongo
from pymongo.errors import PyMongoError

from services.common.readmodels.reader import ReadModelReader
from services.common.readmodels.run_filter import Cursor, RunFilter
from services.common.readmodels.store import Document


class ListBudgetExceeded(Exception):
    """A list query did not get its turn, or did not finish, within its time budget."""


class BoundedLists:
    """A `ReadModelReader` whose `list_runs` calls are bounded (see the module docstring);
    `_id` reads go straight through, never waiting for a list."""

    def __init__(
        self, inner: ReadModelReader, concurrency: int, seconds: float, grace: float = 1.0
    ) -> None:
        self._inner = inner
        self._turns = asyncio.Semaphore(concurrency)
        self._seconds = seconds
        # How long past the budget to wait for an adapter that does not honour pymongo's
        # timeout (an in-memory one) before cancelling its query.
        self._grace = grace

    async def get(
        self, collection: str, doc_id: str, *, without: Collection[str] = ()
    ) -> Document | None:
        return await self._inner.get(collection, doc_id, without=without)

    async def load(self, collection: str, ids: Collection[str]) -> dict[str, Document]:
        return await self._inner.load(collection, ids)

    async def list_runs(self, flt: RunFilter, after: Cursor | None, limit: int) -> list[Document]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._seconds
        try:
            async with asyncio.timeout(self._seconds):
                await self._turns.acquire()
        except TimeoutError:
            raise ListBudgetExceeded(
                f"list_busy: other list queries held this server for {self._seconds:g} s; "
                "retry later or narrow the filter"
            ) from None
        try:
            left = max(deadline - loop.time(), 1e-6)
            async with asyncio.timeout(left + self._grace):
                with pymongo.timeout(left):
                    return await self._inner.list_runs(flt, after, limit)
        except TimeoutError:
            raise self._too_slow() from None
        except PyMongoError as exc:
            if exc.timeout:
                raise self._too_slow() from exc
            raise
        finally:
            self._turns.release()

    def _too_slow(self) -> ListBudgetExceeded:
        return ListBudgetExceeded(
            f"list_timeout: the list query did not finish within {self._seconds:g} s; "
            "retry later or narrow the filter"
        )
