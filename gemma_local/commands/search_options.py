"""The search flags that ``serve``, ``generate --search`` and ``chat --search`` share.

    @search_options
    def serve(..., **flags):
        chain = default_chain(search_settings(**flags))

Flags override ``GEMMA_LOCAL_*`` env vars, which override defaults (see ``SearchSettings``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from gemma_local.cli_support import CliError


def search_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--search-providers``, ``--searxng-url`` and ``--search-timeout`` to a command."""
    options = [
        click.option(
            "--search-providers",
            metavar="NAMES",
            help="Search providers to ask, in order, comma-separated (e.g. local,zim); default: "
            "configured online ones, then local and zim.",
        ),
        click.option("--searxng-url", metavar="URL", help="A SearXNG instance to search (JSON API on)."),
        click.option(
            "--search-timeout", type=click.FloatRange(0.1, 120), metavar="SECONDS", help="Time each provider may take."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def search_settings(**flags: Any) -> Any:
    """``SearchSettings`` from the flags given (others ignored), then env, then defaults.

    Raises:
        CliError: A value is out of range.
    """
    from pydantic import ValidationError

    from gemma_local.search.settings import SearchSettings

    names = SearchSettings.model_fields.keys()
    values = {k: v for k, v in flags.items() if k in names and v is not None}
    try:
        return SearchSettings(**values)
    except ValidationError as e:
        raise CliError(f"Invalid search setting: {e.errors()[0]['msg']}") from e
