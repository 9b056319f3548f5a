"""`FrozenModel.trusted`: instances built without validation, for the engine's hot path.
They must equal the validated ones, field order and JSON included; the tests' check
(`check_trusted_models`, on in tests/conftest.py) refuses values validation would not."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.commits import Commit, SourcePosition


def commit_fields(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "execution_id": "e1",
        "seq": 1,
        "command_id": "c1",
        "command_type": "SignalExecution",
        "run_id": "r1",
        "events": [],
        "committed_at": datetime(2026, 1, 1, tzinfo=UTC),
        "source": SourcePosition(partition=0, offset=3),
        "rejected": [],
        "state": {"seq": 1},
    }
    return {**fields, **changes}


def test_a_trusted_instance_equals_the_validated_one_byte_for_byte() -> None:
    trusted = Commit.trusted(**commit_fields())
    validated = Commit(**commit_fields())
    assert trusted == validated
    assert trusted.model_dump_json() == validated.model_dump_json()
    assert trusted.model_fields_set == set(Commit.model_fields)


def test_trusted_instances_share_their_fields_set_and_a_copy_gets_its_own() -> None:
    # One set per class (every field is given); pydantic must not change it in place.
    first, second = Commit.trusted(**commit_fields()), Commit.trusted(**commit_fields(seq=2))
    assert first.model_fields_set is second.model_fields_set
    # Every way to copy an instance gives the copy a set of its own, which can then be
    # changed without touching the class's shared one.
    copies = [
        first.model_copy(update={"seq": 3}),
        first.model_copy(),
        copy.copy(first),
        copy.deepcopy(first),
        pickle.loads(pickle.dumps(first)),
    ]
    for made in copies:
        assert made.model_fields_set is not first.model_fields_set
        made.model_fields_set.add("extra")
    assert first.model_fields_set == set(Commit.model_fields)
    assert SourcePosition.trusted(partition=0, offset=1).model_fields_set == {"partition", "offset"}


def test_under_the_tests_check_every_field_in_declaration_order_is_required() -> None:
    fields = commit_fields()
    del fields["rejected"]
    with pytest.raises(TypeError, match="every field in order"):
        Commit.trusted(**fields)
    with pytest.raises(TypeError, match="every field in order"):
        SourcePosition.trusted(offset=1, partition=0)


def test_under_the_tests_check_values_validation_refuses_are_refused() -> None:
    with pytest.raises(ValidationError):
        Commit.trusted(**commit_fields(seq=0))


def test_under_the_tests_check_values_validation_would_convert_are_refused() -> None:
    with pytest.raises(AssertionError, match="invalid values"):
        SourcePosition.trusted(partition=0, offset="3")


@pytest.mark.parametrize("build", [Commit.trusted, Commit])
def test_replaced_is_model_copy_with_an_update(build: Any) -> None:
    # Fields in the same order, the same value, JSON and fields set, for a trusted and a
    # validated instance (whose fields set lacks the defaults it was not given).
    original = build(**commit_fields())
    update = {"seq": 4, "run_id": "r2"}
    copied, replaced = original.model_copy(update=update), original.replaced(**update)
    assert replaced == copied
    assert replaced.model_dump_json() == copied.model_dump_json()
    assert list(replaced.__dict__) == list(Commit.model_fields)
    assert replaced.model_fields_set == copied.model_fields_set
    assert (original.seq, original.run_id) == (1, "r1")


def test_replaced_sets_a_field_it_was_not_given_in_a_new_fields_set() -> None:
    fields = commit_fields()
    del fields["source"], fields["rejected"]
    original = Commit.model_validate(fields)
    moved = original.replaced(source=SourcePosition(partition=1, offset=2))
    assert original.model_fields_set == set(fields)
    assert moved.model_fields_set == {*fields, "source"}
    assert moved == original.model_copy(update={"source": SourcePosition(partition=1, offset=2)})


def test_under_the_tests_check_replaced_refuses_what_validation_refuses() -> None:
    with pytest.raises(ValidationError):
        Commit.trusted(**commit_fields()).replaced(seq=0)
