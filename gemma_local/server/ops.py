"""Operations endpoints: ``/health`` (open, for load balancers) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gemma_local.server.auth import require_api_key
from gemma_local.server.metrics import CONTENT_TYPE_LATEST
from gemma_local.server.runtime import get_runtime

router = APIRouter(tags=["Operations"])


class Health(BaseModel):
    status: Literal["ok", "loading", "degraded", "failed", "stopping", "closed"]
    model: str | None = None
    slots: int | None = None
    active: int | None = None
    queued: int | None = None
    error: str | None = None


@router.get(
    "/health",
    response_model=Health,
    summary="Readiness",
    responses={
        503: {
            "model": Health,
            "description": "The model is loading, failed to load, degraded (an RPC worker was lost), or shutting down.",
        }
    },
)
async def health(request: Request) -> JSONResponse:
    """200 once the model is loaded and serving; 503 before that. Needs no API key."""
    runtime = get_runtime(request)
    engine = runtime.engine
    if runtime.status == "ready" and engine is not None:
        stats = engine.stats()
        body = Health(status="ok", model=engine.model_id, slots=stats.slots, active=stats.active, queued=stats.queued)
        return JSONResponse(body.model_dump(mode="json", exclude_none=True))
    error = runtime.error
    body = Health(status=runtime.status, error=getattr(error, "message", str(error)) if error else None)
    headers = {"Retry-After": "5"} if runtime.status == "loading" else {}
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=503, headers=headers)


@router.get(
    "/metrics",
    dependencies=[Depends(require_api_key)],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
async def metrics(request: Request) -> Response:
    """Requests, tokens, queue depth, time to first token and tokens/s, in Prometheus text format."""
    return Response(get_runtime(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
