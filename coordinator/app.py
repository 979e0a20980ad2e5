"""The coordinator's FastAPI application factory.

`create_app(settings)` wires the runtime (database, blob store), the Celery app, the routers
of every domain, the problem handlers, the body-size limit and metrics. In embedded mode
(`memory://` broker) its lifespan also runs the in-process worker and tick loop. It never
migrates the database: `fmtl coordinator serve` does that first (embedded), or
`fmtl coordinator migrate` does (production).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from coordinator.api.middleware import BodySizeLimit, RequestMetrics
from coordinator.api.ops import router as ops_router
from coordinator.api.problems import install_problem_handlers
from coordinator.audit.views import agent_router as audit_agent_router
from coordinator.audit.views import router as audit_router
from coordinator.auth.views import router as tokens_router
from coordinator.console.actions import router as console_actions_router
from coordinator.console.rendering import ConsolePages
from coordinator.console.views import router as console_router
from coordinator.federations.views import router as federations_router
from coordinator.institutions.views import agent_router
from coordinator.institutions.views import router as institutions_router
from coordinator.ledger.views import router as ledger_router
from coordinator.model_versions.views import router as models_router
from coordinator.results.views import router as results_router
from coordinator.rosters.views import agent_router as roster_agent_router
from coordinator.rosters.views import router as roster_router
from coordinator.rounds.agent_views import router as round_agent_router
from coordinator.rounds.agent_views import upload_router as round_upload_router
from coordinator.rounds.events import RedisSubscriber
from coordinator.rounds.views import router as rounds_router
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from coordinator.worker import EmbeddedWorker, FollowupDispatcher, create_celery
from federation.wire import UPLOAD_PREFIX

API_TITLE: Final = "fmtl coordinator"
#: The installed distribution's version (read from its metadata, not from an upper layer).
VERSION: Final = importlib.metadata.version("fmtl")
#: Paths whose handlers stream bodies into the blob store with their own size limit
#: (masked-update uploads of the round engine).
STREAMED_UPLOAD_PREFIXES: Final = (UPLOAD_PREFIX + "/",)


def create_app(settings: Settings, *, start_embedded_worker: bool = True) -> FastAPI:
    runtime = Runtime.from_settings(settings)
    celery = create_celery(settings, runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded: EmbeddedWorker | None = None
        if settings.embedded_worker and start_embedded_worker:
            embedded = EmbeddedWorker(celery, settings.tick_interval_s)
            await run_in_threadpool(embedded.start)
        app.state.embedded_worker = embedded
        # Round events from worker processes reach this process's long-polling agents.
        subscriber = RedisSubscriber(runtime.events) if runtime.events.redis_url else None
        if subscriber is not None:
            subscriber.start()
        try:
            yield
        finally:
            if subscriber is not None:
                await run_in_threadpool(subscriber.stop)
            if embedded is not None:
                await run_in_threadpool(embedded.stop)
            runtime.db.dispose()

    app = FastAPI(
        title=API_TITLE,
        version=VERSION,
        description="Federated multi-task learning with secure aggregation and "
        "differential privacy: the coordinator's API. Errors are application/problem+json.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.celery = celery
    app.state.followups = FollowupDispatcher(celery)
    app.state.embedded_worker = None
    registry = CollectorRegistry()
    app.state.metrics_registry = registry

    for router in (
        ops_router,
        tokens_router,
        federations_router,
        institutions_router,
        roster_router,
        rounds_router,
        models_router,
        results_router,
        ledger_router,
        audit_router,
        agent_router,
        audit_agent_router,
        roster_agent_router,
        round_agent_router,
        round_upload_router,
        console_router,
        console_actions_router,
    ):
        app.include_router(router)
    install_problem_handlers(app, ConsolePages())
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        streamed_prefixes=STREAMED_UPLOAD_PREFIXES,
    )
    app.add_middleware(RequestMetrics, registry=registry)
    return app
