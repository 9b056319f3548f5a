"""HTTP API wiring: the Mistral Workflows REST contract over Runstore's read models and
command gateway (see shared/API.md for the contract as the official SDK speaks it)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.api import routes_commands, routes_runs
from services.api.auth import ApiKeys
from services.api.gateway import CommandGateway
from services.api.run_reader import RunReader
from services.common.kafka_io import kafka_broker
from services.common.kafka_topics import ensure_topics
from services.common.mongo import mongo_client, mongo_database
from services.common.settings import ApiSettings

log = logging.getLogger(__name__)


def build_app(settings: ApiSettings) -> FastAPI:
    keys = ApiKeys(settings.api_keys)
    broker = kafka_broker(settings, client_id="runstore-api")
    client = mongo_client(settings)
    gateway = CommandGateway(settings, broker)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if keys.dev_mode:
            log.warning(
                "RUNSTORE_API_KEYS is unset: DEV MODE, any bearer key is accepted as user 'dev'"
            )
        await ensure_topics(settings)
        await broker.connect()
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()
            await broker.stop()
            await client.close()

    app = FastAPI(title="Runstore", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.api_keys = keys
    app.state.reader = RunReader(mongo_database(client, settings))
    app.state.gateway = gateway

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Fixed paths (/v1/workflows/runs, …) are registered before the routes that take a
    # {workflow_identifier}, so they win (API.md §12.13).
    app.include_router(routes_runs.router)
    app.include_router(routes_commands.router)
    return app
