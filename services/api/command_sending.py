"""Sending a command from an HTTP request: the fields every command the API sends shares,
and the engine's outcome turned into the HTTP answer (errors.py maps rejections)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header

from schemas import admission
from schemas.commands import Command
from schemas.outcomes import CommandOutcome
from services.api import errors
from services.api.auth import Caller
from services.api.gateway import CommandGateway, OutcomeTimeout, PublishFailed
from services.common.clock import utcnow
from services.common.ids import derived_id, new_id

IdempotencyKey = Annotated[str | None, Header(max_length=255)]
"""The `Idempotency-Key` header: with it, a retried request sends the same command id."""


async def apply_command(gateway: CommandGateway, command: Command) -> CommandOutcome:
    """The accepted outcome of `command`, or the HTTP error that says what happened.

    The admission rule (schemas/admission.py) is applied first, as the engine applies it:
    a command it would dead-let is refused here (413 too large, 422 otherwise), instead
    of being published and answered 504 when no outcome comes."""
    # The model's own serializer: the bytes of the union's adapter at a third of its CPU
    # (the adapter first finds which member `command` is).
    encoded = command.__pydantic_serializer__.to_json(command)
    refused = admission.encoded_refusal(command, encoded)
    if refused is not None:
        raise errors.refused(refused)
    try:
        outcome = await gateway.send(command, encoded=encoded)
    except OutcomeTimeout as exc:
        raise errors.gateway_timeout(str(exc)) from exc
    except PublishFailed as exc:
        raise errors.not_published(str(exc)) from exc
    if not outcome.accepted:
        raise errors.rejection_error(outcome)
    return outcome


def command_envelope(kind: str, who: Caller, execution_id: str, key: str | None) -> dict[str, Any]:
    """The fields every command the API sends shares; with an idempotency key the command
    id is derived from it, so a retried request sends the same command."""
    return {
        "command_id": derived_id(kind, who.user_id, execution_id, key) if key else new_id(),
        "execution_id": execution_id,
        "issued_at": utcnow(),
        "user_id": who.user_id,
    }
