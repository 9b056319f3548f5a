"""Calling user code with JSON values (runstore/workflows/_definitions.py): arguments and
results converted by the annotations, the same on every call (the signature is worked out
once per function), for plain functions, methods, bound methods and odd callables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from runstore.workflows._definitions import call_arguments, from_json


class Order(BaseModel):
    id: str
    amount: float


class Handlers:
    def one(self, order: Order) -> Order:
        return order

    def many(self, order: Order, when: datetime, note=None) -> None:  # type: ignore[no-untyped-def]
        return None

    def none(self) -> int:
        return 1


def test_one_parameter_gets_the_value_validated_every_time() -> None:
    for n in range(3):  # the second call on is served by the cached signature
        args, kwargs = call_arguments(Handlers.one, {"id": f"o{n}", "amount": "2.5"})
        assert args == [Order(id=f"o{n}", amount=2.5)] and kwargs == {}


def test_a_bound_method_is_called_as_its_function() -> None:
    bound = Handlers().one
    args, _ = call_arguments(bound, {"id": "o", "amount": 1})
    assert args == [Order(id="o", amount=1)]
    assert call_arguments(Handlers().none, {"ignored": True}) == ([], {})


def test_several_parameters_take_the_object_keys_and_leave_unannotated_ones_raw() -> None:
    args, kwargs = call_arguments(
        Handlers.many, {"order": {"id": "o", "amount": 3}, "when": "2026-01-02T03:04:05Z"}
    )
    assert args == []
    assert kwargs["order"] == Order(id="o", amount=3)
    assert kwargs["when"].year == 2026
    _, raw = call_arguments(
        Handlers.many, {"order": {"id": "o", "amount": 3}, "when": 0, "note": {"x": [1]}}
    )
    assert raw["note"] == {"x": [1]}
    with pytest.raises(TypeError, match="give an object"):
        call_arguments(Handlers.many, [1, 2])


def test_a_value_that_does_not_fit_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ValidationError):
            call_arguments(Handlers.one, {"id": "o"})


def test_results_follow_the_return_annotation() -> None:
    assert from_json(Handlers.one, {"id": "o", "amount": 1}) == Order(id="o", amount=1)
    assert from_json(Handlers.none, "3") == 3

    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    assert from_json(untyped, [1]) == [1]


def test_an_unhashable_callable_is_served_too() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __eq__(self, other: object) -> bool:
            return False

        def __call__(self, value: int) -> int:
            return value

    # (A callable object's hints are not read, as before: its value goes in as it is.)
    args, _ = call_arguments(Unhashable(), "7")
    assert args == ["7"]

    def anything(value: Any) -> Any:
        return value

    assert call_arguments(anything, {"a": 1}) == ([{"a": 1}], {})
