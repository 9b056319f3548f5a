"""Request and response bodies of the command endpoints, as the official SDK sends and
reads them (API.md §4): unknown request fields are ignored and `null` means absent."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

_NAME = Annotated[str, Field(min_length=1, max_length=200)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InvocationRequest(_Request):
    """Body of signals, queries and updates: `{name, input?}`; `input` is an object (or
    the SDK's `{b64payload, encoding_options, empty}` when it encodes payloads)."""

    name: _NAME
    input: dict[str, Any] | None = None


class ResetRequest(_Request):
    event_id: int = Field(ge=1)
    """The `event_number` in the latest run's history to reset to (1 = its start)."""
    reason: str | None = Field(default=None, max_length=2000)
    exclude_signals: bool | None = False
    exclude_updates: bool | None = False


class BatchRequest(_Request):
    execution_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1)


class SignalAccepted(BaseModel):
    message: str = "Signal accepted"


class BatchItemResult(BaseModel):
    status: str
    """`success` or `failure`."""
    error: str | None = None


class BatchResponse(BaseModel):
    results: dict[str, BatchItemResult]


class QueryResponse(BaseModel):
    query_name: str
    result: Any


class UpdateResponse(BaseModel):
    update_name: str
    result: Any
