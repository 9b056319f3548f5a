"""`runstore` command line: run one service, or operate on the stores."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.common.logs import configure_logging
from services.common.settings import ApiSettings, EngineSettings, ProjectorSettings


def _run_engine() -> None:
    from services.engine.app import build_app

    settings = EngineSettings()
    configure_logging(settings.log_level)
    asyncio.run(build_app(settings).run())


def _run_projector() -> None:
    from services.projector.app import build_app

    settings = ProjectorSettings()
    configure_logging(settings.log_level)
    asyncio.run(build_app(settings).run())


def _run_api() -> None:
    import uvicorn

    from services.api.app import build_app

    settings = ApiSettings()
    configure_logging(settings.log_level)
    uvicorn.run(
        build_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="runstore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("engine", help="apply commands from Kafka to the event store")
    sub.add_parser("projector", help="project events into the read models")
    sub.add_parser("api", help="serve the HTTP API")
    args = parser.parse_args(argv)
    runners = {"engine": _run_engine, "projector": _run_projector, "api": _run_api}
    runners[args.command]()


if __name__ == "__main__":
    main(sys.argv[1:])
