"""The Go tests of the local FerretDB build: the wrapper's own (deploy/local/ferretdb:
its SQLite settings, the collector's target, the `_id` index fix, the lazy logger), run
with the Go toolchain that builds the server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.servers import local_script

infra = local_script("infra")


def go_test(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOWORK": "off", "CGO_ENABLED": "0"}
    return subprocess.run(
        [go, "test", "-count=1", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_wrappers_go_tests_pass() -> None:
    result = go_test(infra.FERRETDB_SRC, "-mod=readonly", ".")
    assert result.returncode == 0, result.stdout + result.stderr
