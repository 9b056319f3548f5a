"""`runstore` command line: run one service, or operate on the stores."""

from __future__ import annotations

import asyncio
import sys
import time

from services.common.logs import configure_logging
from services.common.runtime import tune_gc
from services.common.settings import ApiSettings, EngineSettings, ProjectorSettings


def _run_engine() -> None:
    from services.engine.app import build_app

    settings = EngineSettings()
    configure_logging(settings.log_level)
    app = build_app(settings)
    tune_gc()
    asyncio.run(app.run())


def _run_projector() -> None:
    from services.projector.app import build_app

    settings = ProjectorSettings()
    configure_logging(settings.log_level)
    app = build_app(settings)
    tune_gc()
    asyncio.run(app.run())


def _run_api() -> None:
    import uvicorn

    from services.api.app import build_app

    settings = ApiSettings()
    configure_logging(settings.log_level)
    app = build_app(settings)
    tune_gc()
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # libuv's loop and the C HTTP parser: a third less CPU per request than the
        # pure-Python defaults (asyncio, h11).
        loop="uvloop",
        http="httptools",
    )


def _rebuild_projections() -> None:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from services.common.mongo import mongo_client, mongo_database
    from services.common.readmodels.mongo_store import MongoReadModelStore
    from services.projector.mongo_commit_source import MongoCommitSource
    from services.projector.rebuild import rebuild

    settings = ProjectorSettings()
    configure_logging(settings.log_level)
    started = time.monotonic()
    bar = Progress(
        TextColumn("rebuild"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("commits"),
        TaskProgressColumn(),
        # The rate over the whole rebuild so far: commits folded per second.
        TextColumn("{task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
        console=Console(stderr=True),  # stdout stays free for scripts
        transient=False,
    )
    task = bar.add_task("rebuild", total=None, rate=0.0)

    def progress(done: int, total: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        bar.update(task, completed=done, total=total, rate=done / elapsed)

    async def run() -> None:
        client = mongo_client(settings)
        try:
            db = mongo_database(client, settings)
            bar.console.print(
                f"rebuilding runs, executions and history in {settings.mongo_database!r} "
                "from commits (stop the projectors first)"
            )
            with bar:
                report = await rebuild(
                    MongoReadModelStore(db), MongoCommitSource(db), progress=progress
                )
        finally:
            await client.close()
        bar.console.print(
            f"rebuilt from {report.commits} commits ({report.events} events): "
            f"{report.runs} runs, {report.executions} executions, "
            f"{report.history_chunks} history chunks in {time.monotonic() - started:.1f}s"
        )

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    """`runstore`: the service commands (as the stack starts them) and the operator's
    commands of services/console."""
    import typer

    from services.console.app import app

    app.command("engine", help="Apply commands from Kafka to the event store.")(_run_engine)
    app.command("projector", help="Project events into the read models.")(_run_projector)
    app.command("api", help="Serve the HTTP API and the web UI.")(_run_api)
    projections = typer.Typer(help="Operate on the read models.", no_args_is_help=True)
    projections.command(
        "rebuild",
        help="Drop runs/executions/history and rebuild them from the commits "
        "(stop the projectors first).",
    )(_rebuild_projections)
    app.add_typer(projections, name="projections")
    app(args=argv, prog_name="runstore")


if __name__ == "__main__":
    main(sys.argv[1:])
