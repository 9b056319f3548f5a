"""`runstore` command line: run one service, or operate on the stores."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from services.common.logs import configure_logging
from services.common.runtime import tune_gc
from services.common.settings import (
    ApiSettings,
    EngineSettings,
    ProjectorSettings,
    TimersSettings,
    WorkerSettings,
)


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


def _run_timers() -> None:
    from services.timers.app import build_app

    settings = TimersSettings()
    configure_logging(settings.log_level)
    app = build_app(settings)
    tune_gc()
    asyncio.run(app.run())


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


def _run_api() -> None:
    import uvicorn

    from services.api.app import build_app
    from services.api.http_deadlines import deadline_protocol

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
        limit_concurrency=settings.api_max_connections,
        # libuv's loop and the C HTTP parser: a third less CPU per request than the
        # pure-Python defaults (asyncio, h11); the parser's protocol with deadlines on
        # reading a request (slow clients).
        loop="uvloop",
        http=deadline_protocol(
            settings.api_header_timeout_seconds, settings.api_body_timeout_seconds
        ),
        # Requests still running after this on SIGTERM (waits for a result, streams) are
        # cancelled: the process exits within a bound.
        timeout_graceful_shutdown=settings.api_shutdown_seconds,
    )


def _run_worker(modules: list[str], deployment: str | None) -> None:
    from runstore.workflows import run_worker
    from runstore.workflows._discovery import discover

    settings = WorkerSettings()
    configure_logging(settings.log_level)
    workflows, activities = discover(modules)
    if not workflows:
        raise SystemExit(f"no @workflow.define class found in {', '.join(modules)}")
    tune_gc()
    run_worker(workflows, activities, deployment_name=deployment, settings=settings)


def _rebuild_projections() -> None:
    from services.common.mongo import mongo_client, mongo_database
    from services.common.readmodels.mongo_store import MongoReadModelStore
    from services.projector.mongo_commit_source import MongoCommitSource
    from services.projector.parking import ParkedExecutions
    from services.projector.rebuild import rebuild

    settings = ProjectorSettings()
    configure_logging(settings.log_level)
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        # One stderr line redrawn in place: the commits folded so far and the rate.
        elapsed = max(time.monotonic() - started, 1e-9)
        share = done / total if total else 1.0
        width = 30
        bar = "#" * int(share * width)
        sys.stderr.write(
            f"\rrebuild [{bar:<{width}}] {done}/{total} commits "
            f"({share:.0%}, {done / elapsed:,.0f}/s)"
        )
        sys.stderr.flush()

    async def run() -> None:
        client = mongo_client(settings)
        try:
            db = mongo_database(client, settings)
            sys.stderr.write(
                f"rebuilding runs, executions and history in {settings.mongo_database!r} "
                "from commits (stop the projectors first)\n"
            )
            report = await rebuild(
                MongoReadModelStore(db),
                MongoCommitSource(db),
                progress=progress,
                parking=ParkedExecutions(db),
            )
        finally:
            await client.close()
        sys.stderr.write(
            f"\nrebuilt from {report.commits} commits ({report.events} events): "
            f"{report.runs} runs, {report.executions} executions, "
            f"{report.history_chunks} history chunks in {time.monotonic() - started:.1f}s"
            + (
                f"; {report.parked} executions could not be projected and are parked "
                "(`runstore projections parked`)"
                if report.parked
                else ""
            )
            + "\n"
        )

    asyncio.run(run())


def _parked(retry: bool, execution_ids: list[str]) -> None:
    from services.common.mongo import mongo_client, mongo_database
    from services.projector.parking import parked_executions, request_retry

    settings = ProjectorSettings()

    async def run() -> None:
        client = mongo_client(settings)
        try:
            db = mongo_database(client, settings)
            if retry:
                asked = await request_retry(db, execution_ids)
                print(f"{asked} parked executions will be retried by their projectors")
                return
            parked = await parked_executions(db)
            for d in parked:
                print(
                    f"{d['_id']}\tseq {d['seq']}\tpartition {d.get('partition')}\t"
                    f"attempts {d['attempts']}\tretry at {d['retry_at']:%Y-%m-%dT%H:%M:%SZ}\t"
                    f"{d['error']}"
                )
            print(f"{len(parked)} executions parked")
        finally:
            await client.close()

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="runstore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("engine", help="apply commands from Kafka to the event store")
    sub.add_parser("projector", help="project events into the read models")
    sub.add_parser("api", help="serve the HTTP API")
    worker = sub.add_parser("worker", help="run workflow code: the worker of one deployment")
    worker.add_argument(
        "--module",
        action="append",
        required=True,
        help="module (or package) holding @workflow.define classes and @activity functions; "
        "repeatable",
    )
    worker.add_argument(
        "--deployment", default=None, help="deployment served (default RUNSTORE_WORKER_DEPLOYMENT)"
    )
    timers = sub.add_parser("timers", help="fire durable timers and schedules")
    timers_sub = timers.add_subparsers(dest="action")
    timers_sub.add_parser("status", help="pending timers, next fire time, lateness per instance")
    projections = sub.add_parser("projections", help="operate on the read models")
    projections_sub = projections.add_subparsers(dest="action", required=True)
    projections_sub.add_parser(
        "rebuild",
        help="drop runs/executions/history and rebuild them from the commits "
        "(stop the projectors first)",
    )
    projections_sub.add_parser(
        "parked", help="list the executions the projector could not project (parked)"
    )
    retry = projections_sub.add_parser(
        "retry", help="have the projectors retry parked executions now (all, or those named)"
    )
    retry.add_argument("execution_ids", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "projections":
        if args.action == "rebuild":
            _rebuild_projections()
        else:
            _parked(args.action == "retry", getattr(args, "execution_ids", []))
        return
    if args.command == "worker":
        _run_worker(args.module, args.deployment)
        return
    if args.command == "timers" and args.action == "status":
        _timers_status()
        return
    runners = {
        "timers": _run_timers,
        "engine": _run_engine,
        "projector": _run_projector,
        "api": _run_api,
    }
    runners[args.command]()


if __name__ == "__main__":
    main(sys.argv[1:])
