"""An order saga: reserve stock, charge the card, ship; on failure or cancel, undo what
was done (compensating activities), then fail or end as canceled.

Input: {"order_id": "o-1", "amount": 12.5, "fail_at": null | "charge" | "ship",
        "wait_seconds": 0}  (`wait_seconds` pauses before shipping: time to cancel it).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from runstore.workflows import (
    ActivityError,
    ApplicationError,
    RetryPolicy,
    activity,
    workflow,
)

_FAST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)


@activity(retry_policy=_FAST_RETRY)
async def reserve_stock(order: dict[str, Any]) -> str:
    return f"reservation-{order['order_id']}"


@activity(retry_policy=_FAST_RETRY)
async def charge_card(order: dict[str, Any]) -> str:
    if order.get("fail_at") == "charge":
        raise ApplicationError("card declined", type="CardDeclined", non_retryable=True)
    return f"charge-{order['order_id']}"


@activity(retry_policy=_FAST_RETRY)
async def ship(order: dict[str, Any]) -> str:
    if order.get("fail_at") == "ship":
        raise ApplicationError("carrier unavailable", type="CarrierDown")
    return f"shipment-{order['order_id']}"


@activity
async def release_stock(reservation: str) -> str:
    return f"released {reservation}"


@activity
async def refund(charge: str) -> str:
    return f"refunded {charge}"


@workflow.define(name="order-saga", description="Reserve, charge, ship; compensate on failure.")
class OrderSaga:
    def __init__(self) -> None:
        self.done: list[str] = []
        self.compensations: list[str] = []

    @workflow.run
    async def run(self, order: dict[str, Any]) -> dict[str, Any]:
        undo: list[tuple[Any, str]] = []
        try:
            reservation = await reserve_stock(order)
            self.done.append(reservation)
            undo.append((release_stock, reservation))
            charge = await charge_card(order)
            self.done.append(charge)
            undo.append((refund, charge))
            if order.get("wait_seconds"):
                await workflow.sleep(float(order["wait_seconds"]))
            shipment = await ship(order)
            self.done.append(shipment)
            return {"order_id": order["order_id"], "steps": self.done}
        except (ActivityError, asyncio.CancelledError) as exc:
            for step, value in reversed(undo):
                self.compensations.append(await step(value))
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ApplicationError(
                f"order {order['order_id']} failed and was compensated: {exc}",
                type="OrderFailed",
                non_retryable=True,
                details={"compensations": self.compensations},
            ) from None

    @workflow.query
    def progress(self) -> dict[str, Any]:
        return {"done": self.done, "compensations": self.compensations}
