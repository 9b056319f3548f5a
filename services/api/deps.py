"""Request-scoped access to what `build_app` wires: callers, readers, the gateway."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from services.api.auth import ApiKeys, Caller
from services.api.gateway import CommandGateway
from services.api.run_reader import RunReader
from services.common.settings import ApiSettings


async def _caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    keys: ApiKeys = request.app.state.api_keys
    found = keys.caller(authorization)
    if found is None:
        raise HTTPException(
            status_code=401,
            detail="missing or unknown API key (send Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


def _reader(request: Request) -> RunReader:
    reader: RunReader = request.app.state.reader
    return reader


def _gateway(request: Request) -> CommandGateway:
    gateway: CommandGateway = request.app.state.gateway
    return gateway


def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


Authed = Annotated[Caller, Depends(_caller)]
Reader = Annotated[RunReader, Depends(_reader)]
Gateway = Annotated[CommandGateway, Depends(_gateway)]
Settings = Annotated[ApiSettings, Depends(_settings)]
