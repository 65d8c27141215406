"""``gemma-local worker``: lend this machine's memory and compute to another over llama.cpp RPC."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Any

import click

from gemma_local.cli_support import CliError, friendly_errors, setting_option, settings_from_flags
from gemma_local.settings import WorkerSettings


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _check_port_free(host: str, port: int) -> None:
    # ggml's server only prints "Failed to create server socket" and returns: say why, first.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise CliError(f"Cannot listen on {host}:{port}: {e.strerror or e}.") from e


@click.command()
@setting_option(WorkerSettings, "worker_host", "--host")
@setting_option(WorkerSettings, "worker_port", "--port")
@setting_option(WorkerSettings, "worker_devices", "--device")
@setting_option(WorkerSettings, "worker_threads", "--threads")
@setting_option(WorkerSettings, "worker_cache_dir", "--cache-dir")
@friendly_errors
def worker(**flags: Any) -> None:
    """Serve this machine's memory and compute to `gemma-local serve --rpc HOST:PORT` elsewhere.

    The worker needs no model: the client sends it the layers it is to hold. It serves one
    client at a time. The RPC protocol has no authentication and no encryption: anyone who
    can reach the port can use this machine's memory and run computations on it, so it binds
    loopback unless --host says otherwise; use it only on a trusted network or through a
    tunnel (ssh -L). Ctrl-C stops it.
    """
    from gemma_local.commands.serve import is_loopback
    from gemma_local.engine import rpc
    from gemma_local.engine.model import physical_cores

    settings = settings_from_flags(WorkerSettings, flags)
    rpc.require()
    available = rpc.local_devices()
    if settings.worker_devices:
        devices = [rpc.find_device(spec) for spec in settings.worker_devices]
    else:
        gpus = [d for d in available if d.name != "CPU"]
        devices = gpus or [d for d in available if d.name == "CPU"]
    host, port = settings.worker_host, settings.worker_port
    _check_port_free(host, port)
    threads = settings.worker_threads or physical_cores()
    if not is_loopback(host):
        click.secho(
            f"WARNING: the RPC worker listens on {host}:{port}, reachable from other machines. llama.cpp's RPC "
            "protocol has NO authentication and NO encryption: anyone who can reach this port can use this "
            "machine's memory and compute. Use it only on a trusted network, or bind 127.0.0.1 and tunnel (ssh -L).",
            fg="red",
            bold=True,
            err=True,
        )
    stop = threading.Event()  # set by Ctrl-C or SIGTERM: ggml's loop cannot be interrupted, the process ends
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for d in devices:
        click.echo(f"gemma-local worker: offering {d.name} ({d.description}): {_gib(d.free)} free of {_gib(d.total)}")
    endpoint = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    click.echo(f"gemma-local worker: listening on {endpoint} ({threads} threads); use it with --rpc {endpoint}")
    sys.stdout.flush()
    server = threading.Thread(
        target=rpc.serve,
        args=(endpoint, devices),
        kwargs={"threads": threads, "cache_dir": settings.worker_cache_dir},
        name="gemma-local-rpc-worker",
        daemon=True,  # ggml's loop never returns: the process ends it
    )
    server.start()
    while not stop.is_set() and server.is_alive():
        stop.wait(0.5)
    if not stop.is_set():
        raise CliError(f"The RPC worker stopped: it could not serve on {endpoint}.")
    click.echo("gemma-local worker: stopped", err=True)
