"""What an app holds on ``app.state.runtime``: settings, metrics, and the engine once loaded."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request

from gemma_local.errors import ModelLoadError
from gemma_local.images import ImagePolicy
from gemma_local.pipeline import EngineLike, Pipeline, RequestLimits, ToolForcing
from gemma_local.search import ProviderChain
from gemma_local.server.errors import EngineNotReadyError
from gemma_local.server.metrics import ServerMetrics
from gemma_local.settings import ServerSettings

EngineFactory = Callable[[], EngineLike]


@dataclass
class Runtime:
    """The app's mutable state. The engine loads on a background thread; routes check ``pipeline``.

    Status: ``loading`` → ``ready`` (or ``failed``) → ``stopping`` (shutdown began: new requests
    get 503, those running go on) → ``closed``.
    """

    settings: ServerSettings
    status: Literal["loading", "ready", "failed", "stopping", "closed"] = "loading"
    engine: EngineLike | None = None
    pipeline: Pipeline | None = None
    error: BaseException | None = None
    owns_engine: bool = False
    search_chain: ProviderChain | None = None
    metrics: ServerMetrics = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self._stats)

    def _stats(self) -> tuple[int, int, int] | None:
        engine = self.engine
        if engine is None:
            return None
        stats = engine.stats()
        return stats.slots, stats.active, stats.queued

    def attach(self, engine: EngineLike) -> bool:
        """Serve ``engine``; False (and nothing attached) when the app has already shut down."""
        with self._lock:
            if self.status in ("stopping", "closed"):
                return False
            self.engine = engine
            self.pipeline = Pipeline(
                engine,
                RequestLimits(max_output_tokens=self.settings.max_output_tokens, default_seed=engine.default_seed),
                ImagePolicy.from_settings(self.settings),
                self.search_chain,
                ToolForcing(self.settings.force_tool),
            )
            self.status = "ready"
            return True

    def fail(self, error: BaseException) -> None:
        with self._lock:
            self.error = error
            if self.status != "closed":
                self.status = "failed"

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
        engine = self.engine
        return engine.cancel_all() if engine is not None else 0

    def close(self) -> EngineLike | None:
        """Stop serving; return the engine for the caller to close when the app owns it."""
        with self._lock:
            self.status = "closed"
            engine, self.engine, self.pipeline = self.engine, None, None
            return engine if self.owns_engine else None


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


# FastAPI runs a sync dependency in the worker-thread pool, where it would queue behind the
# pipeline's submit/tokenize work for a few attribute reads: the dependencies are async.
async def get_pipeline(request: Request) -> Pipeline:
    """FastAPI dependency: the pipeline, or 503 while the model loads (or failed to load).

    Raises:
        EngineNotReadyError: the model is loading or the server is stopping (503, Retry-After).
        ModelLoadError: the model failed to load (503, not worth retrying).
    """
    runtime = get_runtime(request)
    pipeline = runtime.pipeline
    if pipeline is not None and runtime.status == "ready":
        return pipeline
    if runtime.status == "failed":
        # Not retryable: the server must be restarted with another model or settings.
        raise ModelLoadError(f"The model failed to load: {getattr(runtime.error, 'message', runtime.error)}")
    if runtime.status in ("stopping", "closed"):
        raise EngineNotReadyError("The server is shutting down.")
    raise EngineNotReadyError()
