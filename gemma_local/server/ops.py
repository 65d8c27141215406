"""Operations endpoints: ``/health`` (open, for load balancers) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gemma_local.server.auth import require_api_key
from gemma_local.server.metrics import CONTENT_TYPE_LATEST
from gemma_local.server.runtime import get_runtime

router = APIRouter(tags=["Operations"])


class Health(BaseModel):
    status: Literal["ok", "loading", "failed", "stopping", "closed"]
    model: str | None = Field(None, description="The model served (serving the store: the default one).")
    loaded: list[str] | None = Field(None, description="The models in memory now.")
    slots: int | None = Field(None, description="Slots of the loaded models together.")
    active: int | None = None
    queued: int | None = None
    error: str | None = None


@router.get(
    "/health",
    response_model=Health,
    summary="Readiness",
    responses={503: {"model": Health, "description": "The model is loading, failed to load, or shutting down."}},
)
async def health(request: Request) -> JSONResponse:
    """200 once serving (one model: once it is loaded); 503 before that. Needs no API key."""
    runtime = get_runtime(request)
    models = runtime.models
    if runtime.status == "ready" and models is not None:
        loaded = models.loaded
        stats = [m.engine.stats() for m in loaded]
        default = loaded[0].entry.id if models.catalog.single and loaded else None
        if default is None and models.catalog.entries:
            default = models.catalog.default.id
        body = Health(
            status="ok",
            model=default,
            loaded=[m.entry.id for m in loaded],
            slots=sum(s.slots for s in stats),
            active=sum(s.active for s in stats),
            queued=sum(s.queued for s in stats),
        )
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
