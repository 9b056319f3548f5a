"""Stand-in workers for catalogue tests: registrations made with the registration library
(services/common/worker_registry.py) as the worker SDK makes them, written straight into the
stack's database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from pymongo import AsyncMongoClient

from schemas.registry import WorkerRegistration, spec_of
from services.common.worker_registry import WorkerRegistry
from tests.support.stack import Stack

T = TypeVar("T")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def with_db(stack: Stack, work: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            stack.env["RUNSTORE_MONGO_URL"], tz_aware=True
        )
        try:
            return await work(mongo[stack.env["RUNSTORE_MONGO_DATABASE"]])
        finally:
            await mongo.close()

    return asyncio.run(go())


class Order(BaseModel):
    order_id: str
    amount: int


class Invoice(BaseModel):
    total: int


class InvoiceWorkflow:
    async def run(self, order: Order) -> Invoice:
        """Bill one order.

        More words."""
        return Invoice(total=order.amount)


def registration(
    deployment: str, names: list[str], interval: float = 60.0, worker: str | None = None
) -> WorkerRegistration:
    return WorkerRegistration(
        worker_id=worker or uid("worker"),
        deployment_name=deployment,
        host="test-host",
        pid=4242,
        version="1.2.3",
        workflows=[
            spec_of(n, InvoiceWorkflow.run, display_name=f"Display {n}", tags=["billing"])
            for n in names
        ],
        heartbeat_interval_seconds=interval,
    )


def register(stack: Stack, reg: WorkerRegistration) -> None:
    with_db(stack, lambda db: WorkerRegistry(db).register(reg))
