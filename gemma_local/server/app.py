"""The FastAPI app factory.

    app = create_app(engine, ServerSettings())            # serve an engine you already have
    app = create_app(lambda: open_engine(settings), ...)  # load it in the background at startup
    app = create_app(StoreLoader(engine_settings), ...)   # every model in the store, on demand

With a factory, the model loads on a background thread once the server starts, so ``/health``
answers 503 (and the API 503 with ``Retry-After``) until it is ready. An engine passed in is
the caller's to close; one the factory made is closed at shutdown. With a
:class:`~gemma_local.serving.ModelLoader`, each model loads on its first request, unloads
once idle for its keep-alive (a sweep runs every :data:`SWEEP_INTERVAL_S`), and every model
still loaded is closed at shutdown.
"""

from __future__ import annotations

import asyncio
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
from gemma_local.serving import ModelCatalog, ModelLoader, ModelManager, parse_keep_alive
from gemma_local.serving.catalog import parse_aliases
from gemma_local.settings import ServerSettings

logger = logging.getLogger("gemma_local.server")

#: How long shutdown waits for a model that is still loading.
LOAD_JOIN_TIMEOUT_S = 120.0
#: How often idle models are checked against their keep-alive.
SWEEP_INTERVAL_S = 0.25


def _is_engine(obj: object) -> bool:
    return hasattr(obj, "submit") and hasattr(obj, "stats")


def _is_loader(obj: object) -> bool:
    return hasattr(obj, "plan") and hasattr(obj, "load") and hasattr(obj, "budget_bytes")


def create_app(
    engine_or_factory: EngineLike | EngineFactory | ModelLoader,
    settings: ServerSettings | None = None,
    *,
    on_load_failure: Callable[[BaseException], None] | None = None,
    search_chain: ProviderChain | None = None,
    catalog: ModelCatalog | None = None,
) -> FastAPI:
    """Build the server app around an engine, a function that loads one, or a model loader.

    Args:
        engine_or_factory: a loaded engine (shared, not closed by the app), a zero-argument
            callable that loads one (called on a background thread at startup; closed at
            shutdown), or a :class:`~gemma_local.serving.ModelLoader` to serve the catalog's
            models on demand.
        settings: API key, CORS origins, output cap, body limit (default: from GEMMA_LOCAL_* env).
        on_load_failure: called (from the loading thread) when the factory raises, e.g. to stop
            the server; the app itself keeps answering 503 with the reason.
        search_chain: the search hook's providers (default: built from GEMMA_LOCAL_* env on
            first use).
        catalog: with a loader, the models offered (default: the store plus the embedded model,
            with the settings' ``--model-alias`` names).

    Raises:
        InvalidRequestError: a malformed ``keep_alive`` or ``model_aliases`` setting.

    Returns:
        The app; its ``state.runtime`` holds the engine, the pipeline and the metrics.
    """
    settings = settings or ServerSettings()
    aliases = parse_aliases(settings.model_aliases)  # checked now, whichever way the models load
    runtime = Runtime(settings=settings, search_chain=search_chain)
    factory: EngineFactory | None = None
    if _is_engine(engine_or_factory):
        runtime.attach(engine_or_factory)  # type: ignore[arg-type]
    elif _is_loader(engine_or_factory):
        runtime.manage(
            ModelManager(
                catalog or ModelCatalog.from_store(aliases),
                runtime.make_pipeline,
                engine_or_factory,  # type: ignore[arg-type]
                keep_alive_s=parse_keep_alive(settings.keep_alive, param="keep_alive"),
                max_loaded=settings.max_loaded,
                load_wait_s=settings.load_timeout,
            )
        )
        runtime.owns_engine = True
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
        sweeper = asyncio.create_task(_sweep(runtime))
        try:
            yield
        finally:
            sweeper.cancel()
            if loader is not None:
                await anyio.to_thread.run_sync(loader.join, LOAD_JOIN_TIMEOUT_S)
            engine = await runtime.close()
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
    app.include_router(models_api.admin_router)
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
            expose_headers=["x-request-id", "retry-after", "x-gemma-local-model", "x-gemma-local-substitution"],
        )
    return app


async def _sweep(runtime: Runtime) -> None:
    """Unload idle models whose keep-alive ran out, until the app stops."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        models = runtime.models
        if models is None or models.loader is None:
            continue
        try:
            await models.sweep()
        except Exception:  # a failing close must not stop the sweeps that follow
            logger.exception("unloading an idle model failed")


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
