"""What an app holds on ``app.state.runtime``: settings, metrics, and the models it serves.

The models are a :class:`~gemma_local.serving.ModelManager`: one pinned engine (an app built
around an engine, or ``serve --model X`` once its background load is done), or every model in
the store, loaded on demand. A generating route takes a lease on the model its body names with
:func:`acquire_model` and gives it back when its generation is over (``routing.respond``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import Request

from gemma_local.errors import ModelLoadError
from gemma_local.images import ImagePolicy
from gemma_local.pipeline import EngineLike, Pipeline, RequestLimits, ToolForcing
from gemma_local.pipeline.model_ids import ServedModels
from gemma_local.search import ProviderChain
from gemma_local.server.errors import EngineNotReadyError
from gemma_local.server.metrics import ModelGauges, ServerMetrics
from gemma_local.server.middleware import RECORD_KEY
from gemma_local.serving import Lease, ModelCatalog, ModelEntry, ModelManager, parse_keep_alive
from gemma_local.serving.catalog import parse_aliases
from gemma_local.settings import ServerSettings

EngineFactory = Callable[[], EngineLike]


@dataclass
class Runtime:
    """The app's mutable state.

    Status: ``loading`` (one-model serving, the engine loads on a background thread) →
    ``ready`` (or ``failed``) → ``stopping`` (shutdown began: new requests get 503, those
    running go on) → ``closed``. Serving the store on demand is ``ready`` from the start.
    ``degraded``: the one engine can no longer generate (an RPC worker holding part of the
    model was lost); requests get that error (503).
    """

    settings: ServerSettings
    status: Literal["loading", "ready", "degraded", "failed", "stopping", "closed"] = "loading"
    models: ModelManager | None = None
    error: BaseException | None = None
    owns_engine: bool = False
    search_chain: ProviderChain | None = None
    metrics: ServerMetrics = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self._gauges)

    def _gauges(self) -> list[ModelGauges]:
        if self.models is None:
            return []
        rows = []
        for model in self.models.loaded:
            stats = model.engine.stats()
            rows.append(ModelGauges(model.entry.id, stats.slots, stats.active, stats.queued, model.memory_bytes))
        return rows

    # --- building pipelines --------------------------------------------------------------

    def make_pipeline(self, engine: EngineLike, models: ServedModels | None = None) -> Pipeline:
        """A pipeline over ``engine`` with this server's limits, image policy and search chain."""
        return Pipeline(
            engine,
            RequestLimits(max_output_tokens=self.settings.max_output_tokens, default_seed=engine.default_seed),
            ImagePolicy.from_settings(self.settings),
            self.search_chain,
            models,
            ToolForcing(self.settings.force_tool),
        )

    def manage(self, manager: ModelManager) -> None:
        """Serve the models of ``manager`` (on demand); ready at once."""
        self.models = manager
        self.status = "ready"

    def attach(self, engine: EngineLike) -> bool:
        """Serve ``engine`` alone; False (and nothing attached) when the app has already shut down."""
        with self._lock:
            if self.status in ("stopping", "closed"):
                return False
            if self.models is None:
                info = engine.info
                entry = ModelEntry(id=engine.model_id, path=Path(info.path), size_bytes=info.size_bytes)
                catalog = ModelCatalog.one(entry, info.metadata, _aliases(self.settings))
                self.models = ModelManager(catalog, self.make_pipeline)
            self.models.pin(engine)
            self.status = "ready"
            return True

    # --- one-model compatibility -----------------------------------------------------------

    @property
    def engine(self) -> EngineLike | None:
        """The only loaded engine (one-model serving), else None."""
        loaded = self.models.loaded if self.models is not None else []
        return loaded[0].engine if len(loaded) == 1 else None

    @property
    def pipeline(self) -> Pipeline | None:
        """The only loaded model's pipeline (one-model serving), else None."""
        loaded = self.models.loaded if self.models is not None else []
        return loaded[0].pipeline if len(loaded) == 1 else None

    # --- lifecycle -----------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        with self._lock:
            self.error = error
            if self.status != "closed":
                self.status = "failed"

    def degrade(self, error: BaseException) -> None:
        """The engine lost part of itself (an RPC worker): answer ``error`` (503) from now on."""
        with self._lock:
            self.error = error
            if self.status == "ready":
                self.status = "degraded"

    def stop_accepting(self) -> None:
        """Shutdown has begun: new requests are refused (503, Retry-After); running ones go on."""
        with self._lock:
            if self.status in ("loading", "ready"):
                self.status = "stopping"

    def end_in_flight(self) -> int:
        """End every generation still running (the grace period is over); return how many.

        Each ends the way the engine shutting down ends it: a streamed answer with the API's
        error event, a whole one with a 503.
        """
        return self.models.end_in_flight() if self.models is not None else 0

    async def close(self) -> EngineLike | None:
        """Stop serving: unload what the manager loaded; return the one-model engine for the
        caller to close when the app owns it."""
        with self._lock:
            self.status = "closed"
        if self.models is None:
            return None
        pinned = [m.engine for m in self.models.loaded if m.pinned]
        await self.models.close()
        return pinned[0] if pinned and self.owns_engine else None


def _aliases(settings: ServerSettings) -> dict[str, str]:
    return parse_aliases(settings.model_aliases)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


# FastAPI runs a sync dependency in the worker-thread pool, where it would queue behind the
# pipeline's submit/tokenize work for a few attribute reads: the dependencies are async.
async def get_models(request: Request) -> ModelManager:
    """FastAPI dependency: the models served, or 503 while the one model loads (or failed to).

    Raises:
        EngineNotReadyError: the model is loading or the server is stopping (503, Retry-After).
        ModelLoadError: the one model failed to load (503, not worth retrying).
    """
    runtime = get_runtime(request)
    models = runtime.models
    if models is not None and runtime.status == "ready":
        return models
    if runtime.status == "degraded" and runtime.error is not None:
        raise runtime.error.with_traceback(None)  # e.g. WorkerLostError: 503, not retryable
    if runtime.status == "failed":
        # Not retryable: the server must be restarted with another model or settings.
        raise ModelLoadError(f"The model failed to load: {getattr(runtime.error, 'message', runtime.error)}")
    if runtime.status in ("stopping", "closed"):
        raise EngineNotReadyError("The server is shutting down.")
    raise EngineNotReadyError()


async def acquire_model(
    request: Request, models: ModelManager, requested: str, keep_alive: str | float | None = None
) -> Lease:
    """A lease on the model the request names (loaded first if need be), noted on the log record.

    Raises:
        InvalidRequestError: a malformed ``keep_alive``.
        ModelNotFoundError, ModelTooLargeError, ModelNotReadyError, ModelLoadError: as
            :meth:`~gemma_local.serving.ModelManager.acquire`.
    """
    seconds = parse_keep_alive(keep_alive) if keep_alive is not None else None
    lease = await models.acquire(requested, seconds)
    record = request.scope.get("state", {}).get(RECORD_KEY)
    if record is not None:
        record.model = requested
        record.served_model = lease.served_id
        record.substituted = lease.substituted
    return lease
