"""The short schemathesis run's configuration (tests/sdk/schemathesis.toml), shared by the
fuzz test and the OpenAPI walk."""

from __future__ import annotations

import tomllib
from pathlib import Path

import schemathesis

CONFIG = Path(__file__).parents[1] / "sdk" / "schemathesis.toml"


def short_run_config(api_url: str) -> schemathesis.Config:
    """The short run: tests/sdk/schemathesis.toml against this API, as alice; the same
    requests every time (derandomized: schemathesis then derives each operation's
    examples from the operation, not from the seed), no stateful phase."""
    settings = tomllib.loads(CONFIG.read_text())
    settings["base-url"] = api_url
    settings["headers"] = {"Authorization": "Bearer test-key"}
    settings["generation"]["deterministic"] = True
    settings["phases"] = {"stateful": {"enabled": False}}
    return schemathesis.Config.from_dict(settings)
