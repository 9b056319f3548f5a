"""Runs every benchmark in bench/ one after the other (`make bench`).

Each prints its own table; servers come from RUNSTORE_* variables or are started locally.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "engine_cpu.py",
    "engine_throughput.py",
    "list_runs.py",
    "http_gateway.py",
    "timers.py",
]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        script = HERE / name
        if not script.exists():
            print(f"== {name}: missing, skipped", flush=True)
            continue
        print(f"\n== {name}", flush=True)
        if subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
