"""The provider registry: every provider, built-in or third-party, is a :class:`ProviderSpec`.

A spec names a provider, says whether it needs the network, and holds a factory that builds
it from :class:`~gemma_local.settings.SearchSettings` (raising
``ProviderNotConfiguredError`` when the settings lack its key or URL). The built-ins register
themselves in ``gemma_local.search.providers`` with :func:`register_provider`; a third-party
package does the same at import, or exposes a spec through the entry point group
``gemma_local.search_providers``, e.g. in its ``pyproject.toml``::

    [project.entry-points."gemma_local.search_providers"]
    mywiki = "mywiki_search:SPEC"
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from gemma_local.search.types import SearchProvider
from gemma_local.settings import SearchSettings

ENTRY_POINT_GROUP = "gemma_local.search_providers"
log = logging.getLogger(__name__)

ProviderFactory = Callable[[SearchSettings], SearchProvider]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """How to build one provider.

    Attributes:
        name: The name used in ``GEMMA_LOCAL_SEARCH_PROVIDERS`` and in response metadata.
        factory: Builds the provider from settings; raises ``ProviderNotConfiguredError`` when
            it is not set up (the default chain then leaves it out).
        online: Whether it needs the network; the default chain asks online providers first.
        description: One line for help texts.
    """

    name: str
    factory: ProviderFactory
    online: bool = False
    description: str = ""


_specs: dict[str, ProviderSpec] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def register_provider(spec: ProviderSpec, *, replace: bool = False) -> None:
    """Make a provider available to the chain under ``spec.name``.

    Raises:
        ValueError: The name is taken (pass ``replace=True`` to override it) or is not a
            lower-case identifier.
    """
    if not spec.name or spec.name != spec.name.strip().lower() or "," in spec.name:
        raise ValueError(f"Invalid search provider name {spec.name!r}: use lower case, no commas.")
    _load_builtins()  # so the built-ins keep their place ahead of anything registered early
    with _lock:
        if spec.name in _specs and not replace and _specs[spec.name] is not spec:
            raise ValueError(f"A search provider named {spec.name!r} is already registered.")
        _specs[spec.name] = spec


def unregister_provider(name: str) -> None:
    """Remove a provider (no error when it is not registered)."""
    with _lock:
        _specs.pop(name, None)


def registered_providers() -> list[ProviderSpec]:
    """Every registered provider, in registration order (the built-ins load on first use)."""
    _load_builtins()
    _load_entry_points()
    with _lock:
        return list(_specs.values())


def provider_spec(name: str) -> ProviderSpec | None:
    """The spec registered under ``name``, if any."""
    return next((s for s in registered_providers() if s.name == name), None)


def _load_builtins() -> None:
    import gemma_local.search.providers  # noqa: F401  (registers the built-ins on import)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
            if not isinstance(spec, ProviderSpec):
                raise TypeError(f"{ep.value} is a {type(spec).__name__}, not a ProviderSpec")
            register_provider(spec)
        except Exception as e:  # a broken plugin must not take search down
            log.warning("Search provider plugin %r was not loaded: %s", ep.name, e)
