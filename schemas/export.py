"""Writes JSON Schemas of the Kafka contracts, for producers and subscribers not in Python.

    python -m schemas.export docs/schemas

A unit test checks the committed files equal what this writes, so they never drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.commands import Command
from schemas.events import Event
from schemas.outcomes import CommandOutcome
from schemas.replies import WorkerReply
from schemas.tasks import WorkflowTask

CONTRACTS: dict[str, tuple[str, TypeAdapter[Any]]] = {
    "command.schema.json": ("A record of workflows.commands", TypeAdapter(Command)),
    "event.schema.json": ("A record of workflows.events", TypeAdapter(Event)),
    "outcome.schema.json": ("A record of workflows.outcomes", TypeAdapter(CommandOutcome)),
    "task.schema.json": ("A record of workflows.tasks", TypeAdapter(WorkflowTask)),
    "reply.schema.json": ("A record of workflows.replies", TypeAdapter(WorkerReply)),
}


def schemas() -> dict[str, str]:
    """File name → JSON Schema text (draft 2020-12, as pydantic writes it)."""
    out: dict[str, str] = {}
    for name, (title, adapter) in CONTRACTS.items():
        schema = adapter.json_schema(mode="validation")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": title,
            **schema,
        }
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str]) -> None:
    target = Path(argv[0] if argv else "docs/schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in schemas().items():
        (target / name).write_text(text)
        print(target / name)


if __name__ == "__main__":
    main(sys.argv[1:])
