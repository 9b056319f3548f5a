"""The API's own settings beyond `ApiSettings`: access mode, streams, request limits.

They extend `ApiSettings` (same `RUNSTORE_` prefix, same environment) so that one object
configures the API; `build_app` upgrades a plain `ApiSettings` to this class.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from services.common.settings import ApiSettings


class AccessMode(StrEnum):
    SHARED = "shared"
    """Every authenticated caller may read and command every run (one workspace, as
    the Mistral API behaves: `list_runs(user_id=...)` filters, it does not restrict)."""
    SEPARATE = "separate"
    """A caller sees and commands only the runs it started; others' runs answer 404."""


class GatewaySettings(ApiSettings):
    api_access_mode: AccessMode = AccessMode.SHARED
    api_sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    """Silence after which a stream sends a `: keep-alive` comment (resets client timeouts)."""
    api_sse_queue_size: int = Field(default=2000, ge=10)
    """Events buffered per stream subscriber before it re-syncs from the store/broker."""
    api_wait_default_seconds: float = Field(default=60.0, gt=0)
    """How long `execute` with `wait_for_result` waits when the body names no timeout."""
    api_wait_max_seconds: float = Field(default=3600.0, gt=0)
    api_batch_max_ids: int = Field(default=1000, ge=1)
    api_bad_requests_per_second: float = Field(default=50.0, gt=0)
    """Refill rate of each client's bucket of failed (4xx) requests; empty bucket → 429."""
    api_bad_requests_burst: int = Field(default=500, ge=1)

    @classmethod
    def from_api(cls, settings: ApiSettings) -> GatewaySettings:
        """The same settings, plus this class's fields read from the environment."""
        if isinstance(settings, cls):
            return settings
        return cls(**settings.model_dump())
