"""``gemma-local serve``: the OpenAI- and Anthropic-compatible HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from gemma_local.cli_support import (
    CliError,
    echo_base_model_notice,
    engine_options,
    friendly_errors,
    setting_option,
    settings_from_flags,
    speculation_policy,
)
from gemma_local.commands.search_options import search_options, search_settings
from gemma_local.errors import WorkerLostError
from gemma_local.settings import EngineSettings, SearchSettings, ServerSettings

logger = logging.getLogger("gemma_local.server")

#: After the grace period, how long uvicorn still waits before cancelling what is left.
SHUTDOWN_BACKSTOP_S = 5.0
#: A lost RPC worker: how long /health reports "degraded" before the server exits.
WORKER_LOST_EXIT_S = 5.0
#: Exit status of a server that stopped because an RPC worker was lost (restart it to reconnect).
EXIT_WORKER_LOST = 3


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def base_urls(host: str, port: int) -> tuple[str, str]:
    """(OpenAI base_url, Anthropic base_url) for clients of a server bound to host:port."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is reachable locally on loopback
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    root = f"http://{host}:{port}"
    return f"{root}/v1", root


@click.command()
@setting_option(ServerSettings, "host")
@setting_option(ServerSettings, "port")
@setting_option(ServerSettings, "api_key")
@setting_option(ServerSettings, "cors_origins", "--cors-origin")
@setting_option(ServerSettings, "max_output_tokens")
@setting_option(ServerSettings, "force_tool", metavar="NAME")
@setting_option(ServerSettings, "allow_remote_images")
@setting_option(ServerSettings, "allowed_image_hosts", "--allowed-image-host")
@setting_option(ServerSettings, "shutdown_grace")
@setting_option(ServerSettings, "keep_alive", metavar="DURATION")
@setting_option(ServerSettings, "max_loaded", metavar="N")
@setting_option(ServerSettings, "max_memory_gib", metavar="GIB")
@setting_option(ServerSettings, "model_aliases", "--model-alias", metavar="NAME=MODEL")
@setting_option(ServerSettings, "load_timeout", metavar="SECONDS")
@setting_option(ServerSettings, "admin_key")
@search_options
@engine_options
@friendly_errors
def serve(**flags: Any) -> None:
    """Serve models over HTTP as an OpenAI and Anthropic compatible API.

    Point any SDK at it: OpenAI(base_url="http://127.0.0.1:8080/v1", api_key=...) or
    Anthropic(base_url="http://127.0.0.1:8080", api_key=...).

    Without --model it serves every model in the store plus the embedded one: a request's
    "model" picks one (store name, alias, file name, gemma-3-4b, or --model-alias), and the
    first request for a model loads it; it unloads after --keep-alive idle, or to make room for
    another (least recently used first). gemma-3-27b with no 27B pulled is answered by the
    default (largest) model, and the response says so. /v1/models lists them all;
    `gemma-local ps` shows what is loaded.

    With --model X it serves that one model, loaded in the background at start (/health
    answers 503 until it is ready) and never unloaded.

    Ctrl-C or SIGTERM stops it gracefully: it stops accepting requests, lets answers in progress
    finish for --shutdown-grace seconds, ends any still running with a clean error event, and
    exits 0. A second Ctrl-C exits at once.
    """
    settings, eng_settings, search = serve_settings(flags)
    _run(settings, eng_settings, search)


def serve_settings(flags: dict[str, Any]) -> tuple[ServerSettings, EngineSettings, SearchSettings]:
    """The server, engine and search settings of ``serve``: its flags, then env, then defaults.

    With no model given (flag or ``GEMMA_LOCAL_MODEL``), ``model`` stays ``None``: every model
    in the store is served on demand.

    Raises:
        CliError: an invalid value (most likely an environment variable's).
    """
    settings = settings_from_flags(ServerSettings, flags)
    eng_settings = settings_from_flags(EngineSettings, flags)
    if eng_settings.model is None and eng_settings.mmproj is not None:
        raise CliError("--mmproj needs --model: serving the whole store, each model loads its own projector.")
    return settings, eng_settings, search_settings(**flags)


def _run(settings: ServerSettings, eng_settings: EngineSettings, search: SearchSettings) -> None:
    from gemma_local.cli_support import open_engine
    from gemma_local.hub.resolve import resolve_model
    from gemma_local.search import default_chain
    from gemma_local.server import create_app

    search_chain = default_chain(search)
    _check_workers(eng_settings)
    speculation_policy(eng_settings)  # a draft model missing or not found fails now, not in the background
    if eng_settings.model is None:
        if eng_settings.rpc:
            raise CliError("serve --rpc splits one model over the workers: name it with --model.")
        app, announce = _store_app(settings, eng_settings, search_chain)
    else:
        resolved = resolve_model(eng_settings.model)  # fail now, with a clear message, not in the background
        echo_base_model_notice(resolved)
        app = None
        announce = f"serving {resolved.id} (loading; /health turns 200 when ready)"
    if not is_loopback(settings.host) and not settings.api_key:
        click.secho(
            f"WARNING: serving on {settings.host}, reachable from other machines, with NO API key: anyone who can "
            "reach this port can use it. Set --api-key or GEMMA_LOCAL_API_KEY.",
            fg="red",
            bold=True,
            err=True,
        )
    logger.setLevel(logging.INFO)  # one line per request
    failures: list[BaseException] = []
    server: Any = None

    def stop(error: BaseException) -> None:
        failures.append(error)
        if server is not None:
            server.should_exit = True

    def load() -> Any:
        engine = open_engine(eng_settings, announce=True)
        engine.on_worker_lost = lambda error: _worker_lost(app.state.runtime, error, stop)
        return engine

    if app is None:
        app = create_app(load, settings, on_load_failure=stop, search_chain=search_chain)
    server = _announcing_server(app, settings.host, settings.port, announce, settings.shutdown_grace)
    server.run()
    if failures:
        error = failures[0]
        if isinstance(error, WorkerLostError):
            # The engine's thread is stuck inside llama.cpp for good: leave without the usual
            # interpreter teardown, which could wait on it.
            click.echo(f"gemma-local: stopped: {error.message}", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_WORKER_LOST)
        raise CliError(f"The model failed to load: {getattr(error, 'message', error)}") from error


def _store_app(settings: ServerSettings, eng_settings: EngineSettings, search_chain: Any) -> tuple[Any, str]:
    """The app serving every model in the store on demand, and the line announcing it."""
    from gemma_local.commands.serve_models import StoreLoader
    from gemma_local.memory import GIB
    from gemma_local.server import create_app
    from gemma_local.serving import ModelCatalog
    from gemma_local.serving.catalog import parse_aliases

    catalog = ModelCatalog.from_store(parse_aliases(settings.model_aliases))
    default = catalog.default  # an empty store and no embedded model: fail now, saying what to pull
    for entry in catalog.entries:
        echo_base_model_notice(entry.id)
    limit = int(settings.max_memory_gib * GIB) if settings.max_memory_gib else None
    loader = StoreLoader(eng_settings, max_memory_bytes=limit)
    for entry in catalog.entries:
        # Said now, not at the first request: a model that can never fit gets a 400 each time.
        need = loader.plan(entry).memory_bytes
        if need > loader.budget_bytes:
            click.echo(
                f"warning: {entry.id} needs about {need / GIB:.1f} GiB with these settings, more than the "
                f"{loader.budget_bytes / GIB:.1f} GiB models may use here: requests for it will be refused.",
                err=True,
            )
    logging.getLogger("gemma_local.serving").setLevel(logging.INFO)  # loads and unloads, one line each
    app = create_app(loader, settings, search_chain=search_chain, catalog=catalog)
    count = len(catalog.entries)
    announce = (
        f"serving {count} model{'s' if count != 1 else ''} on demand (default {default.id}; "
        f"{loader.budget_bytes / GIB:.1f} GiB for models, keep-alive {settings.keep_alive}); see /v1/models"
    )
    return app, announce


def _check_workers(eng_settings: EngineSettings) -> None:
    """An RPC build, and every --rpc worker answering, before the server starts (one clear line if not)."""
    if not eng_settings.rpc:
        return
    from gemma_local.engine import rpc

    rpc.require()
    for endpoint in rpc.parse_endpoints(eng_settings.rpc):
        rpc.probe(endpoint)


def _worker_lost(runtime: Any, error: WorkerLostError, stop: Any) -> None:
    """Requests in flight have failed with ``error``; report degraded, then stop (exit status 3).

    llama.cpp cannot move the lost worker's layers elsewhere, and the engine's thread never
    comes back from it, so the server does not reconnect: it exits non-zero for a supervisor
    (systemd, a container runtime) to restart it once the worker is back.
    """
    runtime.degrade(error)
    click.echo(
        f"gemma-local: {error.message} /health reports degraded; exiting with status {EXIT_WORKER_LOST} "
        f"in {WORKER_LOST_EXIT_S:g}s.",
        err=True,
    )
    timer = threading.Timer(WORKER_LOST_EXIT_S, stop, args=(error,))
    timer.daemon = True
    timer.start()


def _announcing_server(app: Any, host: str, port: int, announce: str, grace_s: float) -> Any:
    """uvicorn's server, printing the base URLs once the socket is bound (port 0 included), and
    stopping gracefully on SIGINT/SIGTERM (see :func:`serve`)."""
    import uvicorn  # here, not at import: every CLI command imports this module
    from uvicorn.server import HANDLED_SIGNALS

    # Our middleware logs one line per request, so uvicorn's access log is off. uvicorn cancels
    # whatever still runs a little after the grace period: a backstop, generations end at it.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=grace_s + SHUTDOWN_BACKSTOP_S,
    )
    runtime = app.state.runtime

    class AnnouncingServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own version raises the signal again once shut down, so the process would
            # die of it (exit 143, or a KeyboardInterrupt for Ctrl-C). A stop that was asked for
            # and done cleanly is a success: exit 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn stops listening and waits for the connections in progress; meanwhile new
            # requests on open connections get 503, and after the grace period every generation
            # still running is ended, so its response finishes (with an error event) by itself.
            runtime.stop_accepting()
            in_flight = len(self.server_state.tasks)
            if in_flight:
                click.echo(f"gemma-local: stopping; {in_flight} request(s) get {grace_s:g}s to finish", err=True)
            end_them = asyncio.get_running_loop().call_later(grace_s, _end_in_flight, runtime)
            try:
                await super().shutdown(sockets)
            finally:
                end_them.cancel()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.should_exit or not self.servers:
                return
            bound = self.servers[0].sockets[0].getsockname()[1]
            openai_url, anthropic_url = base_urls(host, bound)
            click.echo(f"gemma-local: {announce}", err=True)
            click.echo(f"OpenAI base_url: {openai_url}")
            click.echo(f"Anthropic base_url: {anthropic_url}")
            click.echo(f"API docs: {anthropic_url}/docs", err=True)

    return AnnouncingServer(config)


def _end_in_flight(runtime: Any) -> None:
    ended = runtime.end_in_flight()
    if ended:
        logger.warning("shutdown grace period over: ended %d generation(s) still running", ended)
