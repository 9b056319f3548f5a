"""The worker registration contract: JSON schemas derived from a run method's type
hints, and the workflow metrics computed from run rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from schemas.registry import input_schema_of, output_schema_of, spec_of
from services.api.routes_observe import workflow_metrics


class Order(BaseModel):
    order_id: str
    amount: int = 0


class Receipt(BaseModel):
    paid: bool


class Billing:
    async def run(self, order: Order) -> Receipt:
        """Bill an order.

        Details nobody reads."""
        return Receipt(paid=True)


async def two_args(name: str, count: int = 1) -> list[str]:
    return [name] * count


async def untyped(x):  # type: ignore[no-untyped-def]
    return x


def test_one_model_argument_is_the_input_schema() -> None:
    schema = input_schema_of(Billing.run)
    assert schema["properties"]["order_id"] == {"title": "Order Id", "type": "string"}
    assert schema["required"] == ["order_id"]
    assert output_schema_of(Billing.run)["properties"]["paid"]["type"] == "boolean"  # type: ignore[index]


def test_several_arguments_become_an_object_of_them() -> None:
    schema = input_schema_of(two_args)
    assert schema["properties"] == {"name": {"type": "string"}, "count": {"type": "integer"}}
    assert schema["required"] == ["name"]
    assert output_schema_of(two_args) == {"items": {"type": "string"}, "type": "array"}


def test_missing_hints_describe_any_value() -> None:
    assert input_schema_of(untyped) == {}
    assert output_schema_of(untyped) is None


def test_spec_takes_the_docstrings_first_paragraph() -> None:
    spec = spec_of("billing", Billing.run, tags=["money"])
    assert (spec.name, spec.description, spec.tags) == ("billing", "Bill an order.", ["money"])


def test_metrics_count_statuses_and_rank_durations() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {"status": "COMPLETED", "total_duration_ms": ms, "start_time": start, "attempt": 1}
        for ms in (10, 20, 30, 40)
    ] + [
        {"status": "FAILED", "total_duration_ms": 100, "start_time": start, "attempt": 2},
        {"status": "RUNNING", "total_duration_ms": None, "start_time": start, "attempt": 1},
    ]
    got = workflow_metrics(rows, start, start + timedelta(hours=1))
    assert got["execution_count"] == {"value": 6}
    assert got["success_count"] == {"value": 4}
    assert got["error_count"] == {"value": 1}
    assert got["average_latency_ms"] == {"value": 40.0}
    assert got["latency_percentiles_ms"] == {"p50": 30, "p90": 100, "p95": 100, "p99": 100}
    assert got["retry_rate"]["value"] == 1 / 6
    assert got["count_by_status"] == {"COMPLETED": 4, "FAILED": 1, "RUNNING": 1}
