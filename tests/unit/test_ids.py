"""Ids: random ones are version-4 UUIDs in the canonical text form; derived ones repeat."""

from __future__ import annotations

import uuid

from services.common.ids import derived_id, new_id


def test_new_ids_are_canonical_random_uuids() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    variants = set()
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower-case hex, dashes where uuid puts them
        variants.add(text[19])
    assert variants == set("89ab")  # every variant digit occurs, no other


def test_derived_ids_repeat_for_the_same_parts_only() -> None:
    assert derived_id("execute", "alice", "k") == derived_id("execute", "alice", "k")
    assert derived_id("execute", "alice", "k") != derived_id("execute", "bob", "k")
    assert str(uuid.UUID(derived_id("a"))) == derived_id("a")
