"""Runs every benchmark in bench/ one after the other (`make bench`) and writes their
tables, with plots, to docs/benchmarks.md (PNG files in docs/benchmarks/).

    .venv/bin/python bench/run_all.py [--only http_gateway,list_runs] [--quick]
                                      [--out docs/benchmarks.md]

Every benchmark starts the servers it needs (Kafka, FerretDB, PostgreSQL, the peers) on
free ports, so no running stack is needed; RUNSTORE_KAFKA_BOOTSTRAP / RUNSTORE_MONGO_URL,
when set, point the Runstore benchmarks at existing servers instead. `--quick` runs each
with short durations and small sizes (to check the tooling, not to quote). Each
benchmark's output is shown as it runs and copied into the page; a benchmark that fails is
reported there and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass
class Benchmark:
    name: str
    title: str
    args: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    json: bool = False
    """Takes --json FILE: its figures are also plotted."""


BENCHMARKS = [
    Benchmark(
        "engine_cpu",
        "Engine CPU per command (in process, no I/O)",
        quick=["--commands", "5000", "--rounds", "1"],
    ),
    Benchmark(
        "engine_throughput",
        "Engine drain rate and command→outcome latency (Kafka + FerretDB)",
        quick=["--commands", "4000", "--warmup", "2000"],
    ),
    Benchmark(
        "list_runs",
        "Reads: list_runs, point reads and histories on the local store",
        quick=["--sizes", "2000"],
        json=True,
    ),
    Benchmark(
        "http_gateway",
        "HTTP starts against Temporal, Restate and DBOS",
        args=["--clients", "32", "--seconds", "20", "--rounds", "3"],
        quick=["--clients", "16", "--seconds", "4", "--warmup", "1", "--rounds", "2"],
        json=True,
    ),
    Benchmark(
        "workers",
        "Workers: completed one-activity workflows against Temporal",
        args=["--clients", "64", "--seconds", "20"],
        quick=["--clients", "8", "--seconds", "4", "--warmup", "1"],
        json=True,
    ),
    Benchmark(
        "local_store",
        "The local store: FerretDB on SQLite vs on PostgreSQL",
        quick=["--docs", "5000", "--list-runs", "0"],
        json=True,
    ),
    Benchmark(
        "soak",
        "Reads under write load: 300 commands/s with readers, and each process's memory",
        args=["--minutes", "3", "--rate", "300", "--point-readers", "4", "--run-readers", "2"],
        quick=["--minutes", "0.5", "--rate", "100", "--sample-every", "5"],
    ),
    Benchmark(
        "timers",
        "Timers: fires per second and firing lateness with 100,000 pending",
        quick=["--timers", "5000", "--rate", "1000"],
    ),
]


def host_speed() -> float:
    """A fixed piece of pure-Python work (dict and string churn, as a service's per-record
    code does), in thousands of rounds per second on one core. The same code on this VM has
    run ~1.5x faster or slower from one hour to the next (neighbours on the physical host):
    rows of one benchmark compare; figures of benchmarks run at different speeds do not."""
    rounds, began = 0, time.process_time()
    while time.process_time() - began < 0.5:
        for i in range(1000):
            d = {"execution_id": f"x-{i}", "seq": i, "type": "STARTED"}
            _ = json.dumps(d).encode()[:8] + str(d["seq"]).encode()
        rounds += 1000
    return rounds / (time.process_time() - began) / 1000


def run_one(bench: Benchmark, quick: bool, json_path: Path) -> tuple[int, str, float]:
    """Runs a benchmark, echoing its stdout; returns its exit code, stdout and duration."""
    cmd = [sys.executable, str(HERE / f"{bench.name}.py"), *(bench.quick if quick else bench.args)]
    if bench.json:
        cmd += ["--json", str(json_path)]
    print(f"\n== {bench.name}: {' '.join(cmd[1:])}", flush=True)
    load = os.getloadavg()
    speed = host_speed()
    state = (
        f"load average at start: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"host speed {speed:.0f}k rounds/s (run_all.host_speed)"
    )
    print(state, flush=True)
    began = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [state + "\n"]
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(), "".join(lines), time.monotonic() - began


# --- plots ------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_http_gateway(data: dict[str, Any], out: Path) -> list[Path]:
    """Starts/s of every row (log scale) and the server CPU per start by process: each row's
    median over the rounds (a row's rounds matched by name)."""
    plt = _pyplot()
    rows = median_rows(data["rounds"])
    names = [r["name"] for r in rows]
    colors = ["tab:red" if n.startswith("Runstore") else "tab:gray" for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    ax.barh(names, [r["starts_per_s"] for r in rows], color=colors)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("durable starts per second (log scale; higher is better)")
    ax.set_title(
        f"{data['clients']} clients, {data['seconds']:g} s, {data['cpus']} shared cores"
        + (f"; median of {len(data['rounds'])} rounds" if len(data["rounds"]) > 1 else "")
    )
    for y, r in enumerate(rows):
        ax.text(r["starts_per_s"], y, f" {r['starts_per_s']:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    rates = out / "http_gateway_rates.png"
    fig.savefig(rates, dpi=110)
    plt.close(fig)

    processes = sorted({p for r in rows for p in r["cpu_ms_per_start"]})
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    left = [0.0] * len(rows)
    palette = plt.get_cmap("tab20").colors
    for k, process in enumerate(processes):
        widths = [r["cpu_ms_per_start"].get(process, 0.0) for r in rows]
        ax.barh(names, widths, left=left, label=process, color=palette[k % len(palette)])
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("CPU ms per start, by process (lower is better)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    cpu = out / "http_gateway_cpu.png"
    fig.savefig(cpu, dpi=110)
    plt.close(fig)
    return [rates, cpu]


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per name (in the order names first appear among the rows that ran): its
    median rate over the rounds it ran in and, per process, the median CPU per start over
    the rounds that metered that process."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for round_ in rounds:
        for row in round_:
            if row["starts_per_s"]:
                by_name.setdefault(row["name"], []).append(row)
    merged = []
    for name, rows in by_name.items():
        processes = dict.fromkeys(p for row in rows for p in row["cpu_ms_per_start"])
        merged.append(
            {
                "name": name,
                "starts_per_s": statistics.median(row["starts_per_s"] for row in rows),
                "cpu_ms_per_start": {
                    p: statistics.median(
                        row["cpu_ms_per_start"][p] for row in rows if p in row["cpu_ms_per_start"]
                    )
                    for p in processes
                },
            }
        )
    return merged


def plot_workers(data: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = _pyplot()
    names = [row["name"] for row in data]
    fig, (rates, cpu) = plt.subplots(1, 2, figsize=(11, 3.8))
    rates.barh(names, [row["rate"] for row in data], color="tab:blue")
    rates.set_xlabel("completed workflows/s (execute and wait, one activity)")
    rates.invert_yaxis()
    # CPU per completed workflow, stacked by process; one colour per process name.
    colours: dict[str, Any] = {}
    palette = plt.get_cmap("tab20").colors
    for i, row in enumerate(data):
        left = 0.0
        for process, seconds in row["cpu"].items():
            width = seconds * 1000 / max(row["completed"], 1)
            new = process not in colours
            colour = colours.setdefault(process, palette[len(colours) % len(palette)])
            cpu.barh(i, width, left=left, color=colour, label=process if new else None)
            left += width
    cpu.set_yticks(range(len(names)), labels=[""] * len(names))
    cpu.invert_yaxis()
    cpu.set_xlabel("CPU ms per completed workflow")
    cpu.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out / "workers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_list_runs(data: dict[str, Any], out: Path) -> list[Path]:
    """p95 of every read measure at each size (log scale)."""
    plt = _pyplot()
    sizes = [str(s) for s in data["sizes"]]
    measures = list(data["results"][sizes[0]])
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(measures) + 1.4))
    height = 0.8 / len(sizes)
    for k, size in enumerate(sizes):
        # A list the API cut off at its 10 s deadline (503 list_timeout) is drawn at 10 s.
        values = [
            min(data["results"][size].get(m, {}).get("p95_ms", 0.0), 10_000.0) for m in measures
        ]
        ys = [i + k * height for i in range(len(measures))]
        ax.barh(ys, values, height=height, label=f"{int(size):,} runs")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(measures))], measures, fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.axvline(100, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("p95 ms (log scale; dashed: the 100 ms goal)")
    ax.set_title(data["server"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "list_runs_p95.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_local_store(data: dict[str, Any], out: Path) -> list[Path]:
    """Insert rates of both backends, and the equality filter's time on PostgreSQL."""
    plt = _pyplot()
    stores = data["stores"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    names = list(stores)
    left.bar(names, [stores[n]["inserts_per_s"] for n in names], color=["tab:blue", "tab:green"])
    left.set_ylabel("documents/s")
    left.set_title(f"raw insert_many, {data['docs']:,} documents")
    pg = next((s["index_test"] for s in stores.values() if "index_test" in s), None)
    if pg:
        labels = list(pg)
        right.bar(
            [textwrap.fill(k, 18) for k in labels],
            [pg[k]["postgres_execution_ms"] or 0.0 for k in labels],
            color="tab:green",
        )
        right.set_ylabel("PostgreSQL execution ms")
        right.set_title("equality filter on PostgreSQL, by index")
        right.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = out / "local_store.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths = [path]
    lists = data.get("list_runs") or {}
    if lists:
        # list_runs on each store, side by side: the API's reads end to end.
        names = list(lists)
        size = str(lists[names[0]]["sizes"][0])
        measures = list(lists[names[0]]["results"][size])
        fig, ax = plt.subplots(figsize=(8, 0.3 * len(measures) + 1.4))
        height = 0.8 / len(names)
        for k, name in enumerate(names):
            values = [lists[name]["results"][size][m]["p95_ms"] for m in measures]
            ys = [i + k * height for i in range(len(measures))]
            ax.barh(ys, values, height=height, label=name)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(measures))], measures, fontsize=7)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("p95 ms (log scale)")
        ax.set_title(f"bench/list_runs.py at {int(size):,} runs, by store")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "local_store_list_runs.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


PLOTS: dict[str, Callable[[Any, Path], list[Path]]] = {
    "http_gateway": plot_http_gateway,
    "list_runs": plot_list_runs,
    "local_store": plot_local_store,
    "workers": plot_workers,
}


# --- the page ---------------------------------------------------------------------------------


QUICK_MARK = "**`--quick` run: short durations and small sizes, not figures to quote.**"


def page(sections: list[str], quick: bool) -> str:
    load = os.getloadavg()
    head = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/run_all.py); do not edit by hand: rerun it. Every",
        "benchmark starts its own servers. What each one measures, and what each peer's",
        "start guarantees, is in the output below and in the scripts' docstrings.",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M %Z')}, on {os.cpu_count()} cores shared with",
        "other work (load average, 1 / 5 / 15 min: at each benchmark's start, in its output;",
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end). Each section says when its",
        "benchmark ended: `make bench` runs them all in one go, `--only` reruns some and keeps",
        "the other sections of the page as they were. Rates move by tens of",
        "percent from run to run, and the VM's own speed moves too (the host speed at each",
        "benchmark's start: the same pure-Python work, faster is higher): compare rows of the",
        "same run, not figures from different runs.",
    ]
    if quick:
        head += ["", QUICK_MARK]
    return "\n".join([*head, "", *sections]).rstrip() + "\n"


def page_sections(path: Path) -> dict[str, str]:
    """The sections of a page this script wrote, by their title (the `## ` heading)."""
    if not path.exists():
        return {}
    text = path.read_text()
    if QUICK_MARK in text:  # a --quick page's figures are not to be kept next to real ones
        return {}
    parts = text.split("\n## ")[1:]
    return {part.split("\n", 1)[0]: "## " + part.rstrip() + "\n" for part in parts}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--quick", action="store_true", help="short runs, to test the tooling")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only.split(",")]
    plots_dir = args.out.parent / "benchmarks"
    plots_dir.mkdir(parents=True, exist_ok=True)

    # A partial run keeps the page's other sections (a --quick one does not: its figures
    # are not to be quoted next to a full run's).
    kept = page_sections(args.out) if args.only and not args.quick else {}
    done: dict[str, str] = {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="runstore-bench-") as tmp:
        for bench in chosen:
            json_path = Path(tmp) / f"{bench.name}.json"
            code, output, took = run_one(bench, args.quick, json_path)
            ended = time.strftime("%Y-%m-%d %H:%M %Z")
            section = [
                f"## {bench.title}",
                "",
                f"`bench/{bench.name}.py` ({took / 60:.1f} min, ended {ended})",
            ]
            if code != 0:
                failed.append(bench.name)
                section += ["", f"**Failed with exit code {code}.**"]
            if bench.json and json_path.exists():
                try:
                    pictures = PLOTS[bench.name](json.loads(json_path.read_text()), plots_dir)
                except Exception as exc:  # a plot must not lose the tables
                    section += ["", f"(plot failed: {type(exc).__name__}: {exc})"]
                else:
                    rel = [p.relative_to(args.out.parent) for p in pictures]
                    section += ["", *(f"![{p.stem}]({p.as_posix()})" for p in rel)]
            section += ["", "```", output.rstrip(), "```", ""]
            done[bench.title] = "\n".join(section)
            # Written after each benchmark: a long run that is cut short keeps what it did.
            sections = [done.get(b.title) or kept.get(b.title) for b in BENCHMARKS]
            args.out.write_text(page([s for s in sections if s], args.quick))
    print(f"\nwrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
