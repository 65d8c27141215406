"""The search flags that ``serve``, ``generate --search`` and ``chat --search`` share.

    @search_options
    def serve(..., **flags):
        chain = default_chain(search_settings(**flags))

Flags override ``GEMMA_LOCAL_*`` env vars, which override defaults (see ``SearchSettings``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gemma_local.cli_support import setting_option, settings_from_flags
from gemma_local.settings import SearchSettings


def search_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--search-providers``, ``--searxng-url`` and ``--search-timeout`` (``SearchSettings`` fields)."""
    options = [
        setting_option(SearchSettings, "search_providers", metavar="NAMES"),
        setting_option(SearchSettings, "searxng_url", metavar="URL"),
        setting_option(SearchSettings, "search_timeout", metavar="SECONDS"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def search_settings(**flags: Any) -> SearchSettings:
    """``SearchSettings`` from the flags given (others ignored), then env, then defaults.

    Raises:
        CliError: A value is out of range.
    """
    return settings_from_flags(SearchSettings, flags)
