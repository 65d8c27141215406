"""The built-in providers, registered exactly as a third-party one would be.

Order of registration is the default chain's order within each group: online (``linkup``,
``searxng``) first when configured, then offline (``local``, ``zim``).
"""

from __future__ import annotations

from gemma_local.errors import ProviderNotConfiguredError
from gemma_local.search.registry import ProviderSpec, register_provider
from gemma_local.search.types import SearchProvider
from gemma_local.settings import SearchSettings


def _linkup(settings: SearchSettings) -> SearchProvider:
    from gemma_local.search.providers.linkup import LinkupProvider

    if settings.linkup_api_key is None or not settings.linkup_api_key.get_secret_value():
        raise ProviderNotConfiguredError(
            "The linkup search provider needs an API key: set LINKUP_API_KEY.", provider="linkup"
        )
    return LinkupProvider(
        settings.linkup_api_key.get_secret_value(), base_url=settings.linkup_base_url, depth=settings.linkup_depth
    )


def _searxng(settings: SearchSettings) -> SearchProvider:
    from gemma_local.search.providers.searxng import SearxngProvider

    if not settings.searxng_url:
        raise ProviderNotConfiguredError(
            "The searxng search provider needs the instance URL: pass --searxng-url or set "
            "GEMMA_LOCAL_SEARXNG_URL.",
            provider="searxng",
        )
    return SearxngProvider(settings.searxng_url)


def _local(settings: SearchSettings) -> SearchProvider:
    from gemma_local.search.locations import index_path
    from gemma_local.search.providers.local_index import LocalIndex, LocalIndexProvider

    return LocalIndexProvider(LocalIndex(index_path(settings)))


def _zim(settings: SearchSettings) -> SearchProvider:
    from gemma_local.search.locations import zim_registry_path
    from gemma_local.search.providers.zim import ZimLibrary, ZimProvider

    return ZimProvider(ZimLibrary(zim_registry_path(settings)))


BUILTIN_PROVIDERS = (
    ProviderSpec("linkup", _linkup, online=True, description="Linkup web search API (LINKUP_API_KEY)"),
    ProviderSpec("searxng", _searxng, online=True, description="a SearXNG instance (GEMMA_LOCAL_SEARXNG_URL)"),
    ProviderSpec("local", _local, description="your documents (gemma-local index add PATH)"),
    ProviderSpec("zim", _zim, description="offline ZIM archives (gemma-local index add-zim FILE)"),
)

for _spec in BUILTIN_PROVIDERS:
    register_provider(_spec)
