"""``gemma-local index``: the documents and offline archives the search hook searches."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from gemma_local.cli_support import CliError, friendly_errors
from gemma_local.settings import SearchSettings

_MAX_SKIPPED_SHOWN = 10


def _local_index() -> Any:
    from gemma_local.search.locations import index_path
    from gemma_local.search.providers.local_index import LocalIndex

    return LocalIndex(index_path(SearchSettings()))


def _zim_library() -> Any:
    from gemma_local.search.locations import zim_registry_path
    from gemma_local.search.providers.zim import ZimLibrary

    return ZimLibrary(zim_registry_path(SearchSettings()))


@click.group()
def index() -> None:
    """Your documents and offline archives, searched when a request sets web_search_linkup."""


@index.command("add")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@friendly_errors
def index_add(paths: tuple[Path, ...]) -> None:
    """Index folders and files (Markdown, text, HTML, PDF), or bring them up to date.

    Unchanged files are skipped, changed ones read again, deleted ones dropped. With no PATH,
    every folder already in the index is updated.
    """
    local = _local_index()
    progress = _progress_printer() if sys.stderr.isatty() else None
    reports = local.add(list(paths), progress=progress) if paths else local.update(progress=progress)
    if progress is not None:
        click.echo("\r\033[K", nl=False, err=True)
    if not reports:
        click.echo("Nothing to update: the index is empty. Add a folder with `gemma-local index add PATH`.")
        return
    for r in reports:
        click.echo(
            f"Indexed {r.root}: {r.added} added, {r.updated} updated, {r.unchanged} unchanged, "
            f"{r.removed} removed, {len(r.skipped)} skipped ({r.documents} documents, {r.elapsed_s:.1f}s)."
        )
        for path, reason in r.skipped[:_MAX_SKIPPED_SHOWN]:
            click.echo(f"  skipped {path}: {reason}")
        if len(r.skipped) > _MAX_SKIPPED_SHOWN:
            click.echo(f"  … and {len(r.skipped) - _MAX_SKIPPED_SHOWN} more skipped")


@index.command("add-zim")
@click.argument("file", type=click.Path(path_type=Path))
@friendly_errors
def index_add_zim(file: Path) -> None:
    """Register an offline web archive (a Kiwix ZIM file such as Wikipedia) for search."""
    info = _zim_library().add(file)
    how = "full-text index" if info.fulltext else "no full-text index: titles only"
    click.echo(f"Added {info.path}: {info.title}, {info.articles:,} articles ({how}).")


@index.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def index_list(as_json: bool) -> None:
    """List the indexed folders and the registered ZIM archives."""
    local = _local_index()
    roots = local.roots()
    archives = _zim_library().archives()
    if as_json:
        data = {
            "index": str(local.path),
            "documents": sum(r.documents for r in roots),
            "roots": [
                {
                    "path": r.path,
                    "documents": r.documents,
                    "passages": r.passages,
                    "scanned_at": r.scanned_at,
                    "exists": r.exists,
                }
                for r in roots
            ],
            "zim": [a.as_dict() for a in archives],
        }
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not roots and not archives:
        click.echo(
            "Nothing indexed yet. Add documents with `gemma-local index add PATH`, or an offline "
            "archive with `gemma-local index add-zim FILE`."
        )
        return
    if roots:
        click.echo(f"Documents ({local.path}):")
        width = max(len(r.path) for r in roots)
        for r in roots:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.scanned_at)) if r.scanned_at else "never"
            gone = "  (missing on disk)" if not r.exists else ""
            click.echo(f"  {r.path:<{width}}  {r.documents:>7,} documents  updated {when}{gone}")
    if archives:
        click.echo("ZIM archives:")
        width = max(len(a.path) for a in archives)
        for a in archives:
            how = "full text" if a.fulltext else "titles only"
            click.echo(f"  {a.path:<{width}}  {a.title}, {a.articles:,} articles, {how}")


@index.command("rm")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@friendly_errors
def index_rm(paths: tuple[Path, ...]) -> None:
    """Remove indexed folders (or files) or ZIM archives from search; files on disk stay."""
    library = _zim_library()
    local = _local_index()
    for path in paths:
        if library.remove(path):
            click.echo(f"Removed ZIM archive {path.expanduser().resolve()}.")
            continue
        removed = local.remove(path)
        click.echo(f"Removed {path.expanduser().resolve()} ({removed} documents).")


@index.command("search")
@click.argument("query")
@click.option("-n", "--limit", type=click.IntRange(1, 20), default=5, show_default=True, help="Most results.")
@click.option(
    "-p",
    "--provider",
    "providers",
    multiple=True,
    help="Provider to ask, in order (repeatable; default: local, then zim).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def index_search(query: str, limit: int, providers: tuple[str, ...], as_json: bool) -> None:
    """Search as the search hook would, and print the sources it would give the model.

    Providers are asked in order and the first with results answers.
    """
    from gemma_local.search import default_chain, run_search

    names = ",".join(providers) if providers else "local,zim"
    settings = SearchSettings(search_providers=names, search_max_results=limit)
    outcome = run_search(query, default_chain(settings))
    if as_json:
        data = {
            "query": outcome.query,
            "provider": outcome.provider,
            "sources": [
                {
                    "title": s.title,
                    "url": s.url,
                    "location": s.location,
                    "snippet": s.snippet,
                    "provider": s.provider,
                    "score": s.score,
                }
                for s in outcome.sources
            ],
            "note": outcome.note,
            "attempts": [a.as_dict() for a in outcome.attempts],
        }
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not outcome.sources:
        raise CliError(outcome.note or "No sources found.")
    for i, s in enumerate(outcome.sources, 1):
        click.echo(f"[{i}] {s.title} — {s.location}  ({s.provider})")
        snippet = " ".join(s.snippet.split())
        click.echo(f"    {snippet[:240]}{'…' if len(snippet) > 240 else ''}")


def _progress_printer() -> Any:
    count = 0

    def progress(path: str) -> None:
        nonlocal count
        count += 1
        if count % 50 == 0:
            click.echo(f"\r\033[K  read {count:,} files…", nl=False, err=True)

    return progress
