"""HTTP API wiring: the Mistral Workflows REST contract over Runstore's read models and
command gateway (see shared/API.md for the contract as the official SDK speaks it)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp

from services.api import (
    routes_catalogue,
    routes_commands,
    routes_deployments,
    routes_logs,
    routes_observe,
    routes_runs,
    routes_schedules,
    routes_streams,
    routes_ui,
    routes_workers,
)
from services.api.access import AccessPolicy
from services.api.auth import ApiKeys
from services.api.connection_census import ConnectionCensus
from services.api.deps import Wiring
from services.api.event_fanout import EventFanout
from services.api.execute_fast_path import ExecuteFastPath, InFront
from services.api.front import FrontedApi
from services.api.gateway import CommandGateway
from services.api.limits import BodySizeLimit, FailureBudget
from services.api.list_budget import BoundedLists, ListBudgetExceeded
from services.api.list_index_feed import ListIndexFeed
from services.api.page_tokens import PageTokens
from services.api.run_reader import RunReader
from services.api.topic_tail import TopicFeed
from services.api.worker_requests import WorkerRequests
from services.common import tracing
from services.common.health import Health
from services.common.http_observability import RequestMetrics, RequestTracing, add_probe_routes
from services.common.kafka_topics import ensure_topics
from services.common.metrics import LIST_INDEX_RUNS, SSE_SUBSCRIBERS
from services.common.mongo import (
    ensure_read_models_in_place,
    mongo_client,
    mongo_database,
    read_models_database,
)
from services.common.mongo_catalogue import MongoCatalogue
from services.common.mongo_commit_log import MongoCommitLog
from services.common.readmodels.list_index import IndexedListReader, RunListIndex
from services.common.readmodels.mongo_reader import MongoReadModelReader
from services.common.schedule_store import MongoScheduleStore
from services.common.settings import ApiSettings
from services.common.worker_registry import ensure_catalogue_indexes

log = logging.getLogger(__name__)


def build_app(settings: ApiSettings) -> FastAPI:
    keys = ApiKeys(settings.api_keys)
    client = mongo_client(settings)
    db = mongo_database(client, settings)
    models = read_models_database(client, settings)  # run rows, pointers, histories
    # One consumer for outcomes and events (topic_tail.py says why); worker replies come
    # apart from the engine's batches, so they get a consumer of their own (before the
    # feeds fetched in sessions, session_fetch.py, every fetch named every partition
    # followed, and the replies' 12 were a third of them).
    feed = TopicFeed(settings, "runstore-api-feed")
    replies_feed = TopicFeed(settings, "runstore-api-replies")

    # With direct replies, the engine sends the STARTED event of each run a start here
    # opened with its outcome: folded into the run list index before the start is
    # answered, a read right after it finds the run (list_index_feed.py). Asked for only
    # when this instance keeps the index (`gateway.start`'s argument, once the store's
    # kind is known for `auto`).
    def fold_started(values: Sequence[bytes]) -> None:
        list_index_feed.fold_started(values)

    # This instance's HTTP connections, counted by its server's protocol (`runstore api`):
    # once every one waits for an answer, the command window goes out at once.
    census = ConnectionCensus()
    gateway = CommandGateway(settings, feed, fold_started, census)
    worker_requests = WorkerRequests(settings, gateway, replies_feed)
    fanout = EventFanout(settings, queue_size=settings.api_sse_queue_size, feed=feed)
    health = Health(settings, client, consumer=False)
    commits = MongoCommitLog(db)
    list_index = RunListIndex()
    # Catches up on its own consumer, then takes the events the fanout decodes anyway.
    list_index_feed: ListIndexFeed = ListIndexFeed(settings, models, commits, list_index, fanout)
    SSE_SUBSCRIBERS.set_function(lambda: fanout.subscriber_count)
    LIST_INDEX_RUNS.set_function(lambda: len(list_index) if list_index.ready else -1)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if keys.dev_mode:
            log.warning(
                "RUNSTORE_API_KEYS is unset: DEV MODE, any bearer key is accepted as user 'dev'"
            )
        log.info("access mode: %s", settings.api_access_mode.value)
        await ensure_read_models_in_place(client, settings)
        await ensure_topics(settings)
        await ensure_catalogue_indexes(db)
        await gateway.start(asks_started=await list_index_feed.wanted())
        # From the ends: an outcome, reply or event published after this point is seen.
        await feed.start()
        await replies_feed.start()
        await fanout.start()
        await list_index_feed.start()
        try:
            yield
        finally:
            await list_index_feed.stop()
            await feed.stop()
            await replies_feed.stop()
            await fanout.stop()
            await gateway.stop()
            await health.close()
            await client.close()

    # FastAPI's own OpenTelemetry off: requests are traced by `RequestTracing` (and
    # measured by `RequestMetrics`), and with it on FastAPI asks the global providers
    # (three environment lookups) on every request (~6 us) to find them unconfigured.
    app = FrontedApi(
        title="Runstore",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.api_keys = keys
    app.state.protocol_execute = None
    app.state.census = census
    app.state.access = AccessPolicy(settings.api_access_mode)
    app.state.list_index = list_index
    app.state.list_index_feed = list_index_feed
    app.state.reader = RunReader(
        # Lists the store answers (before the index is ready, or without one) are bounded;
        # the in-memory index answers without touching the store.
        IndexedListReader(
            BoundedLists(
                MongoReadModelReader(models),
                settings.api_list_concurrency,
                settings.api_list_timeout_seconds,
            ),
            list_index,
        ),
        commits,
        PageTokens.from_secret(settings.page_token_secret),
        gateway.answered,
    )
    app.state.gateway = gateway
    app.state.worker_requests = worker_requests
    app.state.fanout = fanout
    app.state.wiring = Wiring(
        settings=settings,
        gateway=gateway,
        fanout=fanout,
        access=app.state.access,
        all_runs=app.state.reader,
        catalogue=MongoCatalogue(db, models),
        schedules=MongoScheduleStore(db),
    )

    add_probe_routes(app, health)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own 422, unless an error quotes a value JSON cannot hold (a number
        # that overflowed to infinity): then without the quoted inputs, not a 500.
        try:
            return await request_validation_exception_handler(request, exc)
        except ValueError:
            detail = [
                {k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()
            ]
            return JSONResponse(status_code=422, content={"detail": jsonable_encoder(detail)})

    @app.exception_handler(ListBudgetExceeded)
    async def list_over_budget(request: Request, exc: ListBudgetExceeded) -> JSONResponse:
        # Not the caller's fault and not permanent: the store is busy with other lists.
        return JSONResponse(
            status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "1"}
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal_error"})

    # Fixed paths (/v1/workflows/runs, /v1/workflows/events/stream, …) are registered
    # before the routes that take a {workflow_identifier}, so they win (API.md §12.13).
    app.include_router(routes_runs.router)
    app.include_router(routes_streams.router)
    app.include_router(routes_schedules.router)
    app.include_router(routes_observe.router)
    app.include_router(routes_deployments.router)
    app.include_router(routes_logs.router)
    app.include_router(routes_commands.router)
    app.include_router(routes_ui.router)
    app.include_router(routes_workers.router)
    # Last: GET/PUT /v1/workflows/{workflow_identifier} would take any fixed path
    # (/v1/workflows/schedules …) registered after it.
    app.include_router(routes_catalogue.router)

    def front(inner: ASGIApp) -> ASGIApp:
        # Outermost last: the failure budget sees every answer behind it, 413s included
        # (the fast path charges it for the answers it gives itself). The execute
        # fast path stands in front of the limits and the metrics and does their work for
        # the executes it answers (execute_fast_path.py); all of them in front of FastAPI's
        # own layers (front.py), which an execute it answers skips.
        chain: ASGIApp = BodySizeLimit(inner, max_bytes=settings.api_max_body_bytes)
        budget = chain = FailureBudget(
            chain,
            per_second=settings.api_bad_requests_per_second,
            burst=settings.api_bad_requests_burst,
            max_clients=settings.api_failure_clients,
        )
        chain = RequestMetrics(chain)
        chain = fast = ExecuteFastPath(
            chain,
            wiring=app.state.wiring,
            keys=keys,
            on_error=internal_error,
            in_front=InFront(budget, settings.api_max_body_bytes),
        )
        if tracing.tracer() is not None:
            chain = RequestTracing(chain)
        else:
            # For the server's HTTP protocol (`runstore api`: http_deadlines.py), which
            # has it answer executes at the protocol level; not when every request is
            # traced (the tracing middleware stands in front of it).
            app.state.protocol_execute = fast
        return chain

    app.put_in_front(front)
    return app
