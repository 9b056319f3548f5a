"""`runstore` command line: run one service, or operate on the stores."""

from __future__ import annotations

import asyncio
import sys
import time

import typer
import uvloop
from faststream import FastStream

from services.common.logs import configure_logging
from services.common.runtime import tune_gc
from services.common.settings import (
    ApiSettings,
    EngineSettings,
    ProjectorSettings,
    TimersSettings,
    WorkerSettings,
)
from services.common.tracing import setup_tracing


def _serve(app: FastStream) -> None:
    """Run a stream service's app on uvloop, as the API and the worker run: their work per
    batch is small next to the event loop's (sockets, timers, callbacks), which uvloop does
    in C (docs/write-path-cost.md)."""
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(app.run())


def _run_engine() -> None:
    from services.engine.app import build_app

    settings = EngineSettings()
    configure_logging(settings.log_level)
    setup_tracing("runstore-engine", settings)
    _serve(build_app(settings))


def _run_projector() -> None:
    from services.projector.app import build_app

    settings = ProjectorSettings()
    configure_logging(settings.log_level)
    setup_tracing("runstore-projector", settings)
    _serve(build_app(settings))


def _run_api() -> None:
    import uvicorn

    from services.api.app import build_app
    from services.api.http_deadlines import deadline_protocol

    settings = ApiSettings()
    configure_logging(settings.log_level)
    setup_tracing("runstore-api", settings, set_global=False)
    app = build_app(settings)
    tune_gc()
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        limit_concurrency=settings.api_max_connections,
        # libuv's loop and the C HTTP parser: a third less CPU per request than the
        # pure-Python defaults (asyncio, h11); the parser's protocol with deadlines on
        # reading a request (slow clients).
        loop="uvloop",
        http=deadline_protocol(
            settings.api_header_timeout_seconds,
            settings.api_body_timeout_seconds,
            # The execute fast path at the protocol level (execute_fast_path.py).
            execute=app.state.protocol_execute,
            census=app.state.census,
        ),
        # Requests still running after this on SIGTERM (waits for a result, streams) are
        # cancelled: the process exits within a bound.
        timeout_graceful_shutdown=settings.api_shutdown_seconds,
    )


def _run_timers() -> None:
    from services.timers.app import build_app

    settings = TimersSettings()
    configure_logging(settings.log_level)
    setup_tracing("runstore-timers", settings)
    _serve(build_app(settings))


def _timers_status() -> None:
    """One line per timers instance (its last stats report) and the stored totals."""
    from services.common.mongo import mongo_client, mongo_database
    from services.common.schedule_store import SCHEDULES
    from services.timers.app import STATS_COLLECTION

    settings = TimersSettings()

    async def run() -> None:
        client = mongo_client(settings)
        try:
            db = mongo_database(client, settings)
            async for doc in db[STATS_COLLECTION].find({}):
                fields = " ".join(f"{k}={v}" for k, v in doc.items() if k not in {"_id"})
                print(f"instance {doc['_id']}: {fields}")
            # Operator commands, not hot paths: counting scans on FerretDB.
            stored = await db["timers"].count_documents({})
            schedules = await db[SCHEDULES].count_documents({})
            print(f"stored pending timers: {stored}; schedules: {schedules}")
        finally:
            await client.close()

    asyncio.run(run())


def _run_worker(modules: list[str], deployment: str | None) -> None:
    from runstore.workflows import run_worker
    from runstore.workflows._discovery import discover

    settings = WorkerSettings()
    configure_logging(settings.log_level)
    setup_tracing("runstore-worker", settings)
    workflows, activities = discover(modules)
    if not workflows:
        raise SystemExit(f"no @workflow.define class found in {', '.join(modules)}")
    tune_gc()
    run_worker(workflows, activities, deployment_name=deployment, settings=settings)


def _parked(retry: bool, execution_ids: list[str]) -> None:
    from services.common.mongo import mongo_client, read_models_database
    from services.projector.parking import parked_executions, request_retry

    settings = ProjectorSettings()

    async def run() -> None:
        client = mongo_client(settings)
        try:
            db = read_models_database(client, settings)
            if retry:
                asked = await request_retry(db, execution_ids)
                print(
                    f"{asked} parked executions (in {db.name!r}) will be retried by their "
                    "projectors"
                )
                return
            parked = await parked_executions(db)
            for d in parked:
                print(
                    f"{d['_id']}\tseq {d['seq']}\tpartition {d.get('partition')}\t"
                    f"attempts {d['attempts']}\tretry at {d['retry_at']:%Y-%m-%dT%H:%M:%SZ}\t"
                    f"{d['error']}"
                )
            print(f"{len(parked)} executions parked (in {db.name!r})")
        finally:
            await client.close()

    asyncio.run(run())


def _rebuild_projections(history_heads: bool | None = None) -> None:
    """`history_heads`: the layout to write (chunk 0 of each run in its row, or as a
    document for versions before heads); None: RUNSTORE_PROJECTOR_HISTORY_HEADS of this
    shell's environment."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from services.common.mongo import (
        mark_rebuild,
        mongo_client,
        mongo_database,
        read_models_database,
    )
    from services.common.mongo_commit_log import MongoCommitLog
    from services.common.readmodels.mongo_store import MongoReadModelStore
    from services.projector.parking import ParkedExecutions
    from services.projector.rebuild import rebuild

    settings = ProjectorSettings()
    configure_logging(settings.log_level)
    heads = settings.projector_history_heads if history_heads is None else history_heads
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
            models = read_models_database(client, settings)
            bar.console.print(
                f"rebuilding runs, executions and history in {models.name!r} "
                "from commits (stop the projectors first); each run's first history chunk "
                + (
                    "in its run row (--no-history-heads for versions before heads)"
                    if heads
                    else "as a document (the layout before heads)"
                )
            )
            # Services refuse to start on a rebuild that has not finished (mongo.py,
            # `ensure_read_models_in_place`): one that stops half-way is run again.
            await mark_rebuild(models, "running")
            with bar:
                report = await rebuild(
                    MongoReadModelStore(models),
                    MongoCommitLog(db),
                    progress=progress,
                    parking=ParkedExecutions(models),
                    history_heads=heads,
                )
            await mark_rebuild(models, "done")
        finally:
            await client.close()
        bar.console.print(
            f"rebuilt from {report.commits} commits ({report.events} events): "
            f"{report.runs} runs, {report.executions} executions, "
            f"{report.history_chunks} history chunks and blocks "
            f"in {time.monotonic() - started:.1f}s"
            + (
                f"; {report.parked} executions could not be projected and are parked "
                "(`runstore projections parked`)"
                if report.parked
                else ""
            )
        )

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    """`runstore`: the service commands (as the stack starts them) and the operator's
    commands of services/console."""
    from services.console.app import app

    app.command("engine", help="Apply commands from Kafka to the event store.")(_run_engine)
    app.command("projector", help="Project events into the read models.")(_run_projector)
    app.command("api", help="Serve the HTTP API and the web UI.")(_run_api)

    @app.command("worker", help="Run workflow code: a worker of one deployment.")
    def worker(
        module: list[str] = typer.Option(  # noqa: B008 - typer's declaration style
            ...,
            "--module",
            help="module (or package) holding @workflow.define classes and @activity "
            "functions; repeatable",
        ),
        deployment: str | None = typer.Option(
            None, "--deployment", help="deployment served (default RUNSTORE_WORKER_DEPLOYMENT)"
        ),
    ) -> None:
        _run_worker(module, deployment)

    timers = typer.Typer(
        help="Fire durable timers and schedules (no subcommand: run the service).",
        invoke_without_command=True,
    )

    @timers.callback()
    def timers_service(ctx: typer.Context) -> None:
        if ctx.invoked_subcommand is None:
            _run_timers()

    timers.command("status", help="Pending timers, next fire time, lateness per instance.")(
        _timers_status
    )
    app.add_typer(timers, name="timers")
    projections = typer.Typer(help="Operate on the read models.", no_args_is_help=True)

    @projections.command(
        "rebuild",
        help="Drop runs/executions/history and rebuild them from the commits "
        "(stop the projectors first).",
    )
    def rebuild(
        history_heads: bool | None = typer.Option(
            None,
            "--history-heads/--no-history-heads",
            help="write each run's first history chunk in its run row, or as a document "
            "(the layout versions before heads read: use it before a rollback); default: "
            "RUNSTORE_PROJECTOR_HISTORY_HEADS",
        ),
    ) -> None:
        _rebuild_projections(history_heads)

    projections.command(
        "parked", help="List the executions the projector could not project (parked)."
    )(lambda: _parked(False, []))

    @projections.command(
        "retry", help="Have the projectors retry parked executions now (all, or those named)."
    )
    def retry(execution_ids: list[str] = typer.Argument(None)) -> None:  # noqa: B008
        _parked(True, execution_ids or [])

    app.add_typer(projections, name="projections")
    app(args=argv, prog_name="runstore")


if __name__ == "__main__":
    main(sys.argv[1:])
