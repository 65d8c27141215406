"""``gemma-local ps``: the models a running server has loaded (it asks the server's /v1/models)."""

from __future__ import annotations

import json
from typing import Any

import click

from gemma_local.cli_support import CliError, friendly_errors, setting_option, settings_from_flags
from gemma_local.settings import ServerSettings


@click.command()
@click.option("--url", help="The server's root URL (default: http://HOST:PORT from --host and --port).")
@setting_option(ServerSettings, "host", help="The server's address.  [env: GEMMA_LOCAL_HOST; default: 127.0.0.1]")
@setting_option(ServerSettings, "port", help="The server's port.  [env: GEMMA_LOCAL_PORT; default: 8080]")
@setting_option(ServerSettings, "api_key", help="The server's API key.  [env: GEMMA_LOCAL_API_KEY]")
@click.option("--all", "show_all", is_flag=True, help="List the models not loaded too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the server's model objects).")
@friendly_errors
def ps(url: str | None, show_all: bool, as_json: bool, **flags: Any) -> None:
    """Models loaded by the running server: memory, slots in use, and time until each unloads."""
    import httpx

    settings = settings_from_flags(ServerSettings, flags)
    root = (url or f"http://{_host(settings.host)}:{settings.port}").rstrip("/")
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        response = httpx.get(f"{root}/v1/models", headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise CliError(f"No gemma-local server answers at {root} ({e}). Start one with `gemma-local serve`.") from e
    if response.status_code != 200:
        raise CliError(f"The server at {root} answered {response.status_code}: {_message(response)}")
    models = [m for m in response.json().get("data", []) if show_all or m.get("loaded")]
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    if not models:
        click.echo("No model is loaded (the first request for a model loads it).")
        return
    rows = [("MODEL", "MEMORY", "CONTEXT", "SLOTS", "UNLOADS")]
    rows += [_row(m) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _message(response: Any) -> str:
    try:
        error = response.json().get("error", {})
        return error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        return response.text[:200]


def _row(model: dict[str, Any]) -> tuple[str, str, str, str, str]:
    status = model.get("status") or {}
    memory = status.get("memory_bytes") if status else None
    ctx = model.get("context_length")
    if not model.get("loaded"):
        return (model["id"], "-", str(ctx or "-"), "-", "not loaded")
    slots = f"{status.get('active', 0)}/{status.get('slots', 0)} busy"
    if status.get("pinned"):
        unloads = "never (--model)"
    elif status.get("expires_in_s") is None:
        unloads = "busy" if status.get("active") or status.get("queued") else "never"
    else:
        unloads = f"in {_duration(status['expires_in_s'])}"
    return (model["id"], f"{memory / 2**30:.2f} GiB" if memory else "-", str(ctx or "-"), slots, unloads)


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
