"""The FastAPI app factory.

    app = create_app(engine, ServerSettings())            # serve an engine you already have
    app = create_app(lambda: open_engine(settings), ...)  # load it in the background at startup

With a factory, the model loads on a background thread once the server starts, so ``/health``
answers 503 (and the API 503 with ``Retry-After``) until it is ready. An engine passed in is
the caller's to close; one the factory made is closed at shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gemma_local import __version__
from gemma_local.pipeline import EngineLike
from gemma_local.search import ProviderChain
from gemma_local.server import anthropic_messages, models_api, openai_chat, openai_responses, ops
from gemma_local.server.errors import install_error_handlers
from gemma_local.server.middleware import (
    BodyLimitMiddleware,
    LoopbackHostMiddleware,
    RequestLogMiddleware,
    is_loopback_name,
)
from gemma_local.server.openapi import install_openapi
from gemma_local.server.runtime import EngineFactory, Runtime
from gemma_local.settings import ServerSettings

logger = logging.getLogger("gemma_local.server")

#: How long shutdown waits for a model that is still loading.
LOAD_JOIN_TIMEOUT_S = 120.0


def _is_engine(obj: object) -> bool:
    return hasattr(obj, "submit") and hasattr(obj, "stats")


def create_app(
    engine_or_factory: EngineLike | EngineFactory,
    settings: ServerSettings | None = None,
    *,
    on_load_failure: Callable[[BaseException], None] | None = None,
    search_chain: ProviderChain | None = None,
) -> FastAPI:
    """Build the server app around an engine, or around a function that loads one.

    Args:
        engine_or_factory: a loaded engine (shared, not closed by the app), or a zero-argument
            callable that loads one (called on a background thread at startup; closed at shutdown).
        settings: API key, CORS origins, output cap, body limit (default: from GEMMA_LOCAL_* env).
        on_load_failure: called (from the loading thread) when the factory raises, e.g. to stop
            the server; the app itself keeps answering 503 with the reason.
        search_chain: the search hook's providers (default: built from GEMMA_LOCAL_* env on
            first use).

    Returns:
        The app; its ``state.runtime`` holds the engine, the pipeline and the metrics.
    """
    settings = settings or ServerSettings()
    runtime = Runtime(settings=settings, search_chain=search_chain)
    factory: EngineFactory | None = None
    if _is_engine(engine_or_factory):
        runtime.attach(engine_or_factory)  # type: ignore[arg-type]
    else:
        factory = engine_or_factory  # type: ignore[assignment]
        runtime.owns_engine = True

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = None
        if factory is not None:
            loader = threading.Thread(
                target=_load, args=(runtime, factory, on_load_failure), name="gemma-local-load", daemon=True
            )
            loader.start()
        try:
            yield
        finally:
            if loader is not None:
                await anyio.to_thread.run_sync(loader.join, LOAD_JOIN_TIMEOUT_S)
            engine = runtime.close()
            if engine is not None:
                # Off the event loop: closing waits for the engine's current micro-batch.
                await anyio.to_thread.run_sync(engine.close)

    app = FastAPI(
        title="gemma-local",
        version=__version__,
        summary="Gemma 3 on this machine, behind OpenAI- and Anthropic-compatible APIs.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(openai_chat.router)
    app.include_router(openai_responses.router)
    app.include_router(anthropic_messages.router)
    app.include_router(models_api.router)
    app.include_router(ops.router)
    install_openapi(app, api_key=bool(settings.api_key))
    # Added innermost first: CORS wraps the request log, which wraps the host check and the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if is_loopback_name(settings.host):
        app.add_middleware(LoopbackHostMiddleware)  # DNS rebinding: see the middleware
    app.add_middleware(RequestLogMiddleware, metrics=runtime.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after"],
        )
    return app


def _load(runtime: Runtime, factory: EngineFactory, on_failure: Callable[[BaseException], None] | None) -> None:
    try:
        engine = factory()
    except Exception as e:
        logger.error("the model failed to load: %s", getattr(e, "message", e))
        runtime.fail(e)
        if on_failure is not None:
            on_failure(e)
        return
    if not runtime.attach(engine):
        engine.close()  # the server stopped while we were loading
        return
    logger.info("model %s loaded; serving", engine.model_id)
