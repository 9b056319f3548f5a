"""`runstore dlq list|replay`: inspect dead-lettered commands and re-publish chosen ones."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from services.common.settings import RunstoreSettings
from services.console import dlq as dead_letters
from services.console.common import Output, OutputOpt, app, err, out, print_json

dlq_cli = typer.Typer(help="Inspect and replay dead-lettered commands.", no_args_is_help=True)
app.add_typer(dlq_cli, name="dlq")


def _kafka_settings() -> RunstoreSettings:
    """Kafka, MongoDB and topic prefix from RUNSTORE_* like the services."""
    return RunstoreSettings()


@dlq_cli.command("list")
def dlq_list(
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Dead-lettered commands with their reasons and whether they were replayed."""
    letters = asyncio.run(dead_letters.read_dead_letters(_kafka_settings()))
    rows = [d.as_json() for d in letters if reason is None or d.header("x-dlq-reason") == reason]
    if output is Output.json:
        print_json(rows)
        return
    table = Table("ref", "key", "reason", "error", "source", "at", "replay")
    for r in rows:
        table.add_row(
            r["ref"],
            r["key"],
            r["reason"],
            r["error"][:60],
            r["source"],
            r["dead_lettered_at"][:19],
            r["replay"] or "",
        )
    out.print(table)


@dlq_cli.command("replay")
def dlq_replay(
    refs: Annotated[
        list[str] | None, typer.Argument(help="partition:offset of the records to replay.")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Replay every record of this reason.")] = None,
    all_records: Annotated[bool, typer.Option("--all", help="Replay every record.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Re-publish chosen dead letters to the command topic, each at most once ever."""
    if not (refs or reason or all_records):
        raise typer.BadParameter("name records (partition:offset), --reason or --all")
    settings = _kafka_settings()
    letters = asyncio.run(dead_letters.read_dead_letters(settings))
    wanted = set(refs or ())
    chosen = [
        d
        for d in letters
        if all_records or d.ref in wanted or (reason and d.header("x-dlq-reason") == reason)
    ]
    unknown = wanted - {d.ref for d in letters}
    if unknown:
        err.print(f"[red]not on the dead-letter topic:[/red] {', '.join(sorted(unknown))}")
        raise typer.Exit(1)
    report = asyncio.run(dead_letters.replay(settings, chosen))
    if output is Output.json:
        print_json(
            {
                "published": report.published,
                "already_replayed": report.already,
                "interrupted": report.interrupted,
            }
        )
        return
    out.print(f"published {len(report.published)}: {' '.join(report.published)}")
    if report.already:
        out.print(f"already replayed, skipped {len(report.already)}: {' '.join(report.already)}")
    if report.interrupted:
        err.print(
            f"[yellow]an earlier replay was interrupted for[/yellow] "
            f"{' '.join(report.interrupted)}: not repeated (see docs/operations.md)"
        )
