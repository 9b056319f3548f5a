#!/usr/bin/env python3
"""Render the Kubernetes manifests with kustomize and validate them offline.

    python deploy/k8s/validate.py              # base and every overlay
    python deploy/k8s/validate.py --print production

kustomize is built from the Go module proxy (`go install
sigs.k8s.io/kustomize/kustomize/v5@KUSTOMIZE_VERSION`) into
`.local/cache/kustomize-<version>/` on first use. Every rendered object is validated, with
unknown fields refused, against the Kubernetes JSON schemas that the PyPI package
`kubernetes-validate` ships (a test dependency), for each version in
KUBERNETES_VERSIONS: nothing is downloaded at validation time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "deploy" / "local"))

import infra  # noqa: E402  (for its cache directory, lock and tool checks)

KUSTOMIZE_VERSION = "v5.8.1"  # the newest that builds with Go 1.24 (v5.8.2 needs 1.26)
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""Oldest and newest Kubernetes the manifests are meant for."""
TARGETS = ("base", "overlays/production")


def kustomize_binary() -> Path:
    """kustomize, built once into the shared cache (a file lock guards concurrent builds)."""
    home = infra.CACHE_DIR / f"kustomize-{KUSTOMIZE_VERSION}"
    binary = home / "kustomize"
    if binary.exists():
        return binary
    go = infra._require_tool("go", "install Go >= 1.24 (it also builds the local FerretDB)")
    home.mkdir(parents=True, exist_ok=True)
    with infra._file_lock(infra.CACHE_DIR / f".kustomize-{KUSTOMIZE_VERSION}.lock", "kustomize"):
        if binary.exists():
            return binary
        print(f"[k8s] building kustomize {KUSTOMIZE_VERSION} with {go} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="kustomize-") as tmp:
            env = {**os.environ, "GOBIN": tmp, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
            subprocess.run(
                [go, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
                env=env,
                cwd=tmp,
                check=True,
            )
            shutil.move(str(Path(tmp) / "kustomize"), binary)
    return binary


def render(target: str) -> list[dict[str, Any]]:
    """`kustomize build deploy/k8s/<target>` as a list of objects."""
    import yaml

    out = subprocess.run(
        [str(kustomize_binary()), "build", str(HERE / target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"[k8s] kustomize build {target} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def problems(objects: list[dict[str, Any]]) -> Iterator[str]:
    """Every schema violation, for every Kubernetes version checked."""
    import kubernetes_validate

    for version in KUBERNETES_VERSIONS:
        for obj in objects:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                yield f"{name} (Kubernetes {version}): {exc.message} at {list(exc.path)}"
            except kubernetes_validate.SchemaNotFoundError as exc:
                yield f"{name} (Kubernetes {version}): no schema ({exc})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--print", metavar="TARGET", help="print the rendered TARGET and stop")
    args = parser.parse_args()
    if args.print:
        print(
            subprocess.run(
                [str(kustomize_binary()), "build", str(HERE / args.print)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        return
    failed = False
    for target in TARGETS:
        objects = render(target)
        found = list(problems(objects))
        failed |= bool(found)
        for problem in found:
            print(f"[k8s] {target}: {problem}", file=sys.stderr)
        status = "INVALID" if found else "valid"
        kinds = ", ".join(sorted({str(o["kind"]) for o in objects}))
        print(
            f"[k8s] {target}: {len(objects)} objects ({kinds}) {status} for Kubernetes "
            f"{' and '.join(KUBERNETES_VERSIONS)}"
        )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
