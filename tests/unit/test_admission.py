"""The admission rule (schemas/admission.py): what it refuses, where it says it is, and
that the engine dead-letters a refused command before deciding it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import admission
from schemas.commands import parse_command
from services.engine.memory_event_store import MemoryEventStore
from services.engine.processor import CommandProcessor, InboundRecord, StateCache
from tests.support.engine import command, record, start


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


# (where the value goes in a command, the command around it)
CARRIERS = {
    "start input": lambda v: command("StartWorkflow", "x1", "c", workflow_name="wf", input=v),
    "signal input": lambda v: command("SignalExecution", "x1", "c", name="s", input=v),
    "complete result": lambda v: command("CompleteExecution", "x1", "c", run_id="r", result=v),
    "failure details": lambda v: command(
        "FailExecution", "x1", "c", run_id="r", failure={"message": "m", "details": v}
    ),
    "activity result": lambda v: command(
        "RecordActivityTask",
        "x1",
        "c",
        run_id="r",
        stage="completed",
        task_id="t",
        activity_name="a",
        result=v,
    ),
}
REFUSED = {
    "NUL in a key": ({"a\x00b": 1}, "NUL"),
    "key starting with $": ({"ok": [{"$where": 1}]}, "'$'"),
    "key with a dot": ({"a.b": 1}, "'.'"),
    "integer over 64 bits": ({"n": 2**63}, "64 bits"),
    "nested 65 levels": (nested(65), "deeper"),
    "nested 150 levels": (nested(150), "deeper"),
}
ADMITTED = {
    "dollar inside a key": {"a$": 1, "": 2},
    "nested 64 levels": nested(64),
    "NUL in a string value": {"a": "x\x00y"},
    "largest integer": {"n": 2**63 - 1, "m": -(2**63)},
    "non-ASCII": {"ключ": "значение ✓"},
}


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("case", REFUSED)
def test_a_value_no_store_can_take_is_refused_wherever_it_is(carrier: str, case: str) -> None:
    value, says = REFUSED[case]
    parsed = parse_command(json.dumps(CARRIERS[carrier](value)))
    found = admission.refusal(parsed)
    assert found is not None and found.code == admission.PAYLOAD_REFUSED
    assert says in found.message
    assert found.loc[0] == "payload"


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("case", ADMITTED)
def test_values_every_store_takes_are_admitted(carrier: str, case: str) -> None:
    parsed = parse_command(json.dumps(CARRIERS[carrier](ADMITTED[case])))
    assert admission.refusal(parsed) is None


def test_strings_and_numbers_that_cannot_be_encoded_are_refused() -> None:
    surrogate = parse_command(json.dumps(CARRIERS["start input"]("x"))).model_copy(
        update={"execution_id": "x1"}
    )
    payload = surrogate.payload.model_copy(update={"input": {"s": "a\ud800"}})  # type: ignore[attr-defined]
    found = admission.refusal(surrogate.model_copy(update={"payload": payload}))
    assert found is not None and "surrogate" in found.message
    for number in (float("nan"), float("inf")):
        payload = surrogate.payload.model_copy(update={"input": [number]})  # type: ignore[attr-defined]
        found = admission.refusal(surrogate.model_copy(update={"payload": payload}))
        assert found is not None and "finite" in found.message


def test_a_command_that_grows_past_the_limit_when_encoded_again_is_too_large() -> None:
    # `1E15` is 4 bytes in the record and 18 as the engine encodes it again.
    many = b"[" + b",".join([b"1E15"] * 60_000) + b"]"
    raw = json.dumps(CARRIERS["start input"]("X")).encode().replace(b'"X"', many)
    assert len(raw) < admission.MAX_COMMAND_BYTES
    found = admission.refusal(parse_command(raw), len(raw))
    assert found is not None and found.code == admission.TOO_LARGE


@pytest.fixture
def clock() -> Iterator[int]:
    return count(1_700_000_000_000_000_000, 1000)


@pytest.mark.parametrize("case", REFUSED)
async def test_the_engine_dead_letters_a_refused_command_and_goes_on(
    clock: Iterator[int], case: str
) -> None:
    store = MemoryEventStore()
    processor = CommandProcessor(store, StateCache(1000), lambda: next(clock))
    started = await processor.process([record(start("x1", "s1"))])
    run_id = started.commits[0].run_id
    bad = command("CompleteExecution", "x1", "bad", run_id=run_id, result=REFUSED[case][0])
    good = command("SignalExecution", "x1", "good", name="after")
    out = await processor.process([record(bad), record(good)])
    assert [d.reason for d in out.dead_letters] == [admission.PAYLOAD_REFUSED]
    assert "payload.result" in out.dead_letters[0].detail
    assert [(o.command_id, o.accepted) for o in out.outcomes] == [("good", True)]
    assert [c.seq async for c in store.read_stream("x1")] == [1, 2]


async def test_a_record_over_the_command_limit_is_too_large(clock: Iterator[int]) -> None:
    processor = CommandProcessor(MemoryEventStore(), StateCache(1000), lambda: next(clock))
    huge = InboundRecord(
        partition=0,
        offset=1,
        key=b"x1",
        value=json.dumps(start("x1", "c")).encode()[:-1]
        + b',"pad":"'
        + b"x" * admission.MAX_COMMAND_BYTES
        + b'"}',
    )
    out = await processor.process([huge])
    assert [d.reason for d in out.dead_letters] == ["too_large"]


@pytest.mark.parametrize(
    ("value", "loc"),
    [
        ({"ok": [{"$where": 1}]}, ("ok", 0, "$where")),
        ({"a": [1, {"b": 2**64}]}, ("a", 1, "b")),
        ({"ok": [[[{"a.b": 1}]]]}, ("ok", 0, 0, 0, "a.b")),
    ],
)
def test_a_refusal_names_the_whole_path_to_the_value(value: Any, loc: tuple[Any, ...]) -> None:
    parsed = parse_command(json.dumps(CARRIERS["signal input"](value)))
    found = admission.refusal(parsed)
    assert found is not None and found.loc == ("payload", "input", *loc)


def _reference(value: Any, depth: int = 0) -> tuple[str, list[Any]] | None:
    """The rule spelled out plainly (what `_check` does for a JSON value, one call per
    value): the first refused value in walk order, its message, its path."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string holds a lone UTF-16 surrogate", []
        return None
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**63 else ("an integer outside 64 bits", [])
    if isinstance(value, float):
        return None if math.isfinite(value) else ("a number that is not finite", [])
    if depth >= admission.MAX_DEPTH:
        return f"nested deeper than {admission.MAX_DEPTH} levels", []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str):
            bad = admission._bad_key(key)
            if bad is not None:
                return bad, [key]
            found = _reference(key, depth)
            if found is not None:
                return found[0], [key, *found[1]]
        found = _reference(item, depth + 1)
        if found is not None:
            return found[0], [key, *found[1]]
    return None


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.sampled_from(["", "a", "ключ", "a\ud800", "x\x00y", "$x", "a.b"])
)
_KEYS = st.sampled_from(["a", "b", "", "a$", "$where", "a.b", "k\x00", "ключ", "s\udc00"])
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(value=_VALUES, wrap=st.integers(min_value=0, max_value=70))
def test_the_walk_refuses_what_the_plain_rule_refuses(value: Any, wrap: int) -> None:
    # Deep values too: `wrap` levels of arrays around it.
    for _ in range(wrap):
        value = [value]
    parsed = parse_command(json.dumps(CARRIERS["signal input"]("X")))
    payload = parsed.payload.model_copy(update={"input": value})  # type: ignore[attr-defined]
    found = admission.refusal(parsed.model_copy(update={"payload": payload}))
    expected = _reference(value)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.message, found.loc) == (expected[0], ("payload", "input", *expected[1]))
