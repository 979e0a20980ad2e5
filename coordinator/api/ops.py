"""Operations endpoints: liveness, readiness (database, broker, blob store), Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from coordinator.api.deps import PublicDep, RuntimeDep
from coordinator.worker import EmbeddedWorker, check_broker

router = APIRouter(tags=["operations"], dependencies=[PublicDep])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    database: str
    broker: str
    blobs: str


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable."}},
    summary="Readiness: database, broker and blob store reachable",
)
async def readyz(request: Request, runtime: RuntimeDep) -> JSONResponse:
    def probe(check: object) -> str:
        try:
            assert callable(check)
            check()
        except Exception as exc:  # report, never raise: this endpoint describes failures
            return f"unreachable ({type(exc).__name__})"
        return "ok"

    embedded: EmbeddedWorker | None = request.app.state.embedded_worker
    database = await run_in_threadpool(probe, runtime.db.ping)
    if runtime.settings.embedded_worker:
        running = embedded is not None and embedded.alive
        broker = "ok" if running else "unreachable (the embedded worker is not running)"
    else:
        broker = await run_in_threadpool(probe, lambda: check_broker(request.app.state.celery))
    blobs = await run_in_threadpool(probe, runtime.blobs.check)
    result = Readiness(
        ready=database == broker == blobs == "ok", database=database, broker=broker, blobs=blobs
    )
    return JSONResponse(result.model_dump(), status_code=200 if result.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition."}},
    summary="Prometheus metrics",
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
