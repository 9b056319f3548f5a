"""Consumed records in, commands or dead letters out: nothing invalid reaches `decide`.

A record that is not a valid command becomes a `DeadLetter` with a short reason code;
it is published to the dead-letter topic (services/engine/dead_letters.py), never
decided and never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from schemas import admission
from schemas.commands import Command, parse_command


@dataclass(frozen=True, slots=True)
class InboundRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: InboundRecord
    reason: str
    """Short code: empty, too_large, invalid_json, unknown_type, schema_violation,
    key_mismatch, payload_refused (the admission rule, schemas/admission.py)."""
    detail: str


def parse_record(record: InboundRecord, max_bytes: int) -> Command | DeadLetter:
    """The record's command, or why it is not one."""
    value = record.value
    if not value:
        return DeadLetter(record, "empty", "the record has no value")
    if len(value) > max_bytes:
        return DeadLetter(record, "too_large", f"{len(value)} bytes > limit {max_bytes}")
    try:
        command = parse_command(value)
    except ValidationError as exc:
        return DeadLetter(record, _dead_letter_reason(exc), _summarise(exc))
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    if key != command.execution_id:
        # Another key would put this execution's commands on two partitions and break
        # per-execution ordering; refuse it rather than apply it out of order.
        return DeadLetter(
            record,
            "key_mismatch",
            f"record key {key!r} must equal execution_id {command.execution_id!r}",
        )
    # Before anything is decided or stored: a value no store or consumer downstream can
    # take would otherwise stop the projector (or a partition) later.
    refused = admission.refusal(command, len(value))
    if refused is not None:
        return DeadLetter(record, refused.code, str(refused))
    return command


def _dead_letter_reason(exc: ValidationError) -> str:
    kinds = {e["type"] for e in exc.errors()}
    if "json_invalid" in kinds or "json_type" in kinds:
        return "invalid_json"
    if kinds & {"union_tag_invalid", "union_tag_not_found"}:
        return "unknown_type"
    return "schema_violation"


def _summarise(exc: ValidationError, limit: int = 2000) -> str:
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '<record>'}: {e['msg']}" for e in exc.errors()
    ]
    return "; ".join(parts)[:limit]
