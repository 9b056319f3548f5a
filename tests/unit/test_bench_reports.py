"""The benchmark's own verdicts: `bench/http_gateway.py`'s summary over rounds (rows matched
by name whatever order they ran in, each goal counted per round) and `bench/run_all.py`'s
median rows for the plot."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import http_gateway  # noqa: E402
import run_all  # noqa: E402
from loadgen import Result  # noqa: E402

RESTATE_START, RESTATE_RUN = "Restate 1.7.12, start only", "Restate 1.7.12, run"
DBOS_START, DBOS_RUN = "DBOS 3.4 + PostgreSQL, start only", "DBOS 3.4 + PostgreSQL, run"


def row(name: str, rate: float, p99_ms: float = 10.0) -> Result:
    return Result(name, starts=int(rate), seconds=1.0, start_ms=[p99_ms] * 10)


def paced(rate: float, p99_ms: float, offered: float) -> Result:
    return Result(
        http_gateway.PACED, starts=int(rate), seconds=1.0, start_ms=[p99_ms] * 10, offered=offered
    )


def a_round(ours: float, restate_run: float, dbos_start: float, paced_p99: float) -> list[Result]:
    return [
        row(http_gateway.OURS, ours),
        row(RESTATE_START, 3600),
        row(RESTATE_RUN, restate_run),
        row(DBOS_START, dbos_start),
        row(DBOS_RUN, 900),
        paced(restate_run, paced_p99, restate_run),
    ]


def goal_line(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(label))


def test_each_goal_counts_the_rounds_that_met_it() -> None:
    text = http_gateway.summary(
        [
            a_round(1500, 1400, 1200, 30.0),
            a_round(1300, 1400, 1400, 60.0),
            a_round(1600, 1000, 1500, 20.0),
        ]
    )
    restate = goal_line(text, "ahead of Restate's run mode")
    assert "2 of 3:" in restate and "1.07x, 0.93x, 1.60x" in restate and "median 1.07x" in restate
    assert "2 of 3: 1.25x, 0.93x, 1.07x" in goal_line(text, "ahead of DBOS's start")
    p99 = goal_line(text, "p99 <= 50 ms at Restate run's rate")
    assert "2 of 3:" in p99 and "60.0 ms at 1400 of 1400/s" in p99 and "(median 30.00 ms)" in p99
    assert "0 of 3:" in goal_line(text, "(stretch) ahead of Restate's start")


def test_rows_match_by_name_and_ours_has_no_ratio_to_itself() -> None:
    first = a_round(1500, 1400, 1200, 30.0)
    second = [first[0], *reversed(a_round(1500, 3000, 1200, 30.0)[1:])]
    text = http_gateway.summary([first, second])
    run = goal_line(text, RESTATE_RUN)
    assert "1000.0-3000.0 starts/s" not in run and "1400.0-3000.0 starts/s" in run
    assert "Runstore/x 0.50-1.07x" in run
    assert "Runstore/x" not in goal_line(text, http_gateway.OURS)
    assert "Runstore/x" not in goal_line(text, http_gateway.PACED)


def test_the_plot_uses_each_rows_median_over_rounds() -> None:
    rounds = [
        [{"name": "a", "starts_per_s": rate, "cpu_ms_per_start": {"api": cpu}}, extra]
        for rate, cpu, extra in (
            (100.0, 1.0, {"name": "b", "starts_per_s": 0.0, "cpu_ms_per_start": {}}),
            (300.0, 3.0, {"name": "b", "starts_per_s": 50.0, "cpu_ms_per_start": {"x": 2.0}}),
            (200.0, 5.0, {"name": "b", "starts_per_s": 70.0, "cpu_ms_per_start": {"x": 4.0}}),
        )
    ]
    merged = run_all.median_rows(rounds)
    assert [m["name"] for m in merged] == ["a", "b"]
    assert merged[0]["starts_per_s"] == 200.0 and merged[0]["cpu_ms_per_start"] == {"api": 3.0}
    assert merged[1]["starts_per_s"] == 60.0 and merged[1]["cpu_ms_per_start"] == {"x": 3.0}


def test_even_rounds_measure_the_peers_in_reverse_and_ours_last() -> None:
    rows = ["ours", "temporal", "restate", "dbos"]
    assert http_gateway.in_round_order(rows, 1) == rows
    assert http_gateway.in_round_order(rows, 2) == ["dbos", "restate", "temporal", "ours"]
    assert http_gateway.in_round_order(rows, 3) == rows


def test_a_partial_run_finds_the_pages_other_sections_by_title(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(
        run_all.page(["## First\n\nfigures 1\n", "## Second\n\n```\nfigures 2\n```\n"], False)
    )
    sections = run_all.page_sections(page)
    assert list(sections) == ["First", "Second"]
    assert sections["Second"] == "## Second\n\n```\nfigures 2\n```\n"
    assert run_all.page_sections(tmp_path / "none.md") == {}


def test_a_round_whose_rows_could_not_run_does_not_meet_a_goal() -> None:
    failed = a_round(1500, 1400, 1200, 30.0)
    failed[2] = Result(RESTATE_RUN, note="could not run: boom")  # and so no paced row
    del failed[-1]
    text = http_gateway.summary([a_round(1500, 1400, 1200, 30.0), failed])
    assert "1 of 2: 1.07x, could not run" in goal_line(text, "ahead of Restate's run mode")
    assert "1 of 2: 30.0 ms at 1400 of 1400/s, could not run" in goal_line(
        text, "p99 <= 50 ms at Restate run's rate"
    )
    assert "2 of 2:" in goal_line(text, "ahead of DBOS's start")


def test_a_paced_row_short_of_its_rate_or_with_errors_does_not_meet_the_p99_goal() -> None:
    short, erring = a_round(1500, 1400, 1200, 30.0), a_round(1500, 1400, 1200, 30.0)
    short[-1] = paced(1200, 30.0, offered=1400)  # the pacer held back load, unmeasured
    erring[-1].errors = 3
    text = http_gateway.summary([short, erring, a_round(1500, 1400, 1200, 30.0)])
    line = goal_line(text, "p99 <= 50 ms at Restate run's rate")
    assert "1 of 3:" in line and "at 1200 of 1400/s" in line and "3 errors" in line


def test_a_paced_runstore_prints_no_goals() -> None:
    text = http_gateway.summary([a_round(1500, 1400, 1200, 30.0)], goals=False)
    assert "the goals" not in text and "Runstore/x 1.07-1.07x" in goal_line(text, RESTATE_RUN)


def test_a_quick_page_keeps_no_sections(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(run_all.page(["## First\n\nfigures 1\n"], True))
    assert run_all.page_sections(page) == {}
