"""The JSON Schemas in docs/schemas are what the contracts say today."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.export import schemas

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@pytest.mark.parametrize("name", sorted(schemas()))
def test_committed_schema_matches_the_contract(name: str) -> None:
    committed = (DOCS / name).read_text()
    assert committed == schemas()[name], "regenerate: python -m schemas.export docs/schemas"


def test_command_schema_names_every_command_type() -> None:
    schema = json.loads(schemas()["command.schema.json"])
    kinds = set(schema["discriminator"]["mapping"])
    assert {
        "StartWorkflow",
        "CancelExecution",
        "TerminateExecution",
        "SignalExecution",
        "ResetExecution",
        "CompleteExecution",
        "FailExecution",
        "ContinueAsNew",
    } <= kinds
