"""Retrieval for the search hook (``web_search_linkup``): providers, the chain, the hook.

Layout::

    types.py      Source, SearchProvider (the Protocol), ProviderAttempt, SearchOutcome
    locations.py  where the local index and the ZIM list live (SearchSettings: gemma_local.settings)
    registry.py   ProviderSpec, register_provider (built-ins and plugins alike)
    chain.py      ProviderChain (in order, per-provider timeout, first hit wins), default_chain
    hook.py       run_search, build_sources_prompt, format_footer, citation_spans (pure)
    text.py       HTML to text, query keywords, passages
    extract.py    documents (Markdown, text, HTML, PDF) to text for the local index
    providers/    local (SQLite FTS5), zim (libzim), linkup (linkup-sdk), searxng (HTTP JSON)

Nothing here imports the engine or the server; the request pipeline calls the hook (see
``gemma_local.search.hook`` for the sequence), the CLI manages the index
(``gemma_local.commands.index``) and shares the search flags
(``gemma_local.commands.search_options``).
"""

from __future__ import annotations

from gemma_local.search.chain import ProviderChain, default_chain
from gemma_local.search.hook import (
    Citation,
    build_sources_prompt,
    citation_spans,
    format_footer,
    run_search,
    sources_budget,
)
from gemma_local.search.registry import ProviderSpec, register_provider, registered_providers
from gemma_local.search.types import ProviderAttempt, SearchOutcome, SearchProvider, Source
from gemma_local.settings import SearchSettings

__all__ = [
    "Citation",
    "ProviderAttempt",
    "ProviderChain",
    "ProviderSpec",
    "SearchOutcome",
    "SearchProvider",
    "SearchSettings",
    "Source",
    "build_sources_prompt",
    "citation_spans",
    "default_chain",
    "format_footer",
    "register_provider",
    "registered_providers",
    "run_search",
    "sources_budget",
]
