"""The Go tests of the local FerretDB build: the wrapper's own (deploy/local/ferretdb:
its SQLite settings, the collector's target, the `_id` index fix, the lazy logger) and the
patched FerretDB package 03-sjson-marshal.patch changes (its upstream tests, which fix the
exact bytes stored, and ours), run with the Go toolchain that builds the server."""

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
        if os.environ.get("RUNSTORE_REQUIRE_REAL_INFRA"):  # CI: Go built the server
            pytest.fail("no Go toolchain, but the local FerretDB's Go tests must run")
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


def test_the_patched_sjson_package_passes_its_tests() -> None:
    binary = infra.install_ferretdb()
    source = infra.CACHE_DIR / "src" / binary.name
    # FerretDB's test helpers look for a .git directory above the package; the cache sits
    # inside a checkout (or a worktree's link to one).
    result = go_test(source, "-mod=mod", "./internal/handler/sjson/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout
