"""`runstore projections rebuild`: the layout it writes is the operator's to choose on the
command line (a rollback to a version before history heads needs chunk 0 as documents,
whatever the shell's environment says)."""

from __future__ import annotations

from typing import Any

import pytest

import services.common.mongo as mongo_module
import services.projector.rebuild as rebuild_module
from services.cli import main
from services.projector.rebuild import RebuildReport


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], None, True),
        ([], "false", False),
        (["--no-history-heads"], None, False),
        (["--no-history-heads"], "true", False),
        (["--history-heads"], "false", True),
    ],
)
def test_the_rebuild_writes_the_layout_the_command_line_or_else_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: str | None,
    expected: bool,
) -> None:
    asked: list[bool] = []
    steps: list[str] = []

    async def fake_rebuild(*_args: Any, history_heads: bool, **_options: Any) -> RebuildReport:
        asked.append(history_heads)
        steps.append("rebuild")
        return RebuildReport(commits=0, events=0, runs=0, executions=0, history_chunks=0)

    async def fake_mark(models: Any, state: str) -> None:
        steps.append(state)

    monkeypatch.setattr(rebuild_module, "rebuild", fake_rebuild)
    monkeypatch.setattr(mongo_module, "mark_rebuild", fake_mark)
    if env is None:
        monkeypatch.delenv("RUNSTORE_PROJECTOR_HISTORY_HEADS", raising=False)
    else:
        monkeypatch.setenv("RUNSTORE_PROJECTOR_HISTORY_HEADS", env)
    with pytest.raises(SystemExit) as exit_:
        main(["projections", "rebuild", *argv])
    assert exit_.value.code == 0
    assert asked == [expected]
    # Marked running before anything is dropped, done after the last insert.
    assert steps == ["running", "rebuild", "done"]
    said = capsys.readouterr().err
    assert ("in its run row" if expected else "as a document") in said
