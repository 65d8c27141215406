"""The provider chain: ask providers in order, each within its own timeout, first hit wins.

Each provider runs in a daemon thread; the chain waits ``timeout_s`` for it and then moves on
(the provider is also told the timeout, so HTTP clients and SQLite stop by themselves). A
provider that raises, times out, is unavailable or finds nothing is recorded as a
:class:`ProviderAttempt` and the next one is asked. The first provider that returns sources
answers the query. :meth:`ProviderChain.search` never raises for provider trouble.

A provider that failed or timed out is skipped for ``retry_after_s`` (status ``skipped``):
on a laptop that went offline with ``LINKUP_API_KEY`` set, only the first request waits for
Linkup; the next ones go straight to the offline providers until it is tried again.

:func:`default_chain` builds the chain from settings: with no ``GEMMA_LOCAL_SEARCH_PROVIDERS``
it is the online providers that are configured (Linkup with ``LINKUP_API_KEY``, SearXNG with
``GEMMA_LOCAL_SEARXNG_URL``), then ``local`` and ``zim``; with it, exactly the providers
named, in that order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from gemma_local.errors import (
    ProviderNotConfiguredError,
    ProviderUnavailableError,
    SearchConfigError,
    SearchProviderError,
)
from gemma_local.search.registry import provider_spec, registered_providers
from gemma_local.search.text import collapse_spaces
from gemma_local.search.types import ProviderAttempt, SearchOutcome, SearchProvider, Source
from gemma_local.settings import SearchSettings

log = logging.getLogger(__name__)

#: Longest query sent to a provider, in characters (a whole pasted document is not a query).
MAX_QUERY_CHARS = 400
_MAX_SNIPPET_CHARS = 4000


class ProviderChain:
    """Providers asked in order.

    Args:
        providers: The providers, in the order to ask them.
        timeout_s: Seconds each provider may take.
        max_results: Sources asked of each provider.
        retry_after_s: Seconds a provider that failed or timed out is skipped (0: never).
    """

    def __init__(
        self,
        providers: Sequence[SearchProvider],
        *,
        timeout_s: float = 6.0,
        max_results: int = 5,
        retry_after_s: float = 30.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        if retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        self.providers = tuple(providers)
        self.timeout_s = timeout_s
        self.max_results = max_results
        self.retry_after_s = retry_after_s
        self._failed_at: dict[int, float] = {}  # provider position -> monotonic time of failure
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """The providers' names, in order."""
        return [p.name for p in self.providers]

    def search(self, query: str) -> SearchOutcome:
        """Ask each provider in turn until one returns sources.

        Args:
            query: The user's text; whitespace is collapsed and it is cut to
                ``MAX_QUERY_CHARS``.

        Returns:
            The outcome: sources and the provider that found them, or an empty list and a
            note saying why (nothing configured, nothing found, every provider failed).
        """
        text = normalize_query(query)
        if not text:
            return SearchOutcome(query=text, note="The search query is empty.")
        if not self.providers:
            return SearchOutcome(query=text, note="No search provider is configured.")
        attempts: list[ProviderAttempt] = []
        for position, provider in enumerate(self.providers):
            skipped = self._skipped(position, provider.name)
            if skipped is not None:
                attempts.append(skipped)
                continue
            attempt, sources = self._ask(provider, text)
            attempts.append(attempt)
            with self._lock:
                if attempt.status in ("error", "timeout"):
                    self._failed_at[position] = time.monotonic()
                else:
                    self._failed_at.pop(position, None)
            if sources:
                return SearchOutcome(
                    query=text, sources=tuple(sources), provider=provider.name, attempts=tuple(attempts)
                )
        return SearchOutcome(query=text, attempts=tuple(attempts), note=_note(attempts))

    def _skipped(self, position: int, name: str) -> ProviderAttempt | None:
        with self._lock:
            failed_at = self._failed_at.get(position)
        if failed_at is None:
            return None
        ago = time.monotonic() - failed_at
        if ago >= self.retry_after_s:
            return None
        detail = f"failed {ago:.0f}s ago; tried again after {self.retry_after_s:g}s"
        return ProviderAttempt(name, "skipped", 0, 0.0, detail)

    def _ask(self, provider: SearchProvider, query: str) -> tuple[ProviderAttempt, list[Source]]:
        name = provider.name
        started = time.monotonic()
        try:
            raw = _call_with_timeout(
                lambda: provider.search(query, limit=self.max_results, timeout=self.timeout_s), self.timeout_s, name
            )
            sources = _clean(raw, name)[: self.max_results]
        except TimeoutError as e:
            return self._attempt(name, "timeout", started, _timeout_detail(e, self.timeout_s)), []
        except ProviderUnavailableError as e:
            return self._attempt(name, "unavailable", started, e.message), []
        except SearchProviderError as e:
            return self._attempt(name, "error", started, e.message), []
        except Exception as e:  # a provider bug must not fail the request
            log.warning("Search provider %s crashed", name, exc_info=True)
            return self._attempt(name, "error", started, f"{type(e).__name__}: {e}"), []
        status = "ok" if sources else "empty"
        return self._attempt(name, status, started, None, len(sources)), sources

    @staticmethod
    def _attempt(name: str, status: Any, started: float, detail: str | None, results: int = 0) -> ProviderAttempt:
        attempt = ProviderAttempt(name, status, results, time.monotonic() - started, detail)
        if status in ("error", "timeout"):
            log.info("Search provider %s: %s (%s)", name, status, detail)
        return attempt


def default_chain(settings: SearchSettings | None = None) -> ProviderChain:
    """Build the chain from settings (env vars when ``settings`` is omitted).

    Cheap: no file is opened and no network is touched until a search runs, so it may be
    built once at startup or per request.

    Raises:
        SearchConfigError: ``search_providers`` names an unknown provider, or one that is not
            configured (e.g. ``linkup`` without ``LINKUP_API_KEY``).
    """
    settings = settings or SearchSettings()
    names = settings.provider_names()
    providers: list[SearchProvider] = []
    if names is None:
        specs = registered_providers()
        for spec in [s for s in specs if s.online] + [s for s in specs if not s.online]:
            try:
                providers.append(spec.factory(settings))
            except ProviderNotConfiguredError:
                continue
    else:
        known = [s.name for s in registered_providers()]
        for name in dict.fromkeys(names):
            spec = provider_spec(name)
            if spec is None:
                raise SearchConfigError(
                    f"Unknown search provider {name!r} in GEMMA_LOCAL_SEARCH_PROVIDERS; known: {', '.join(known)}.",
                    provider=name,
                )
            providers.append(spec.factory(settings))
    return ProviderChain(
        providers,
        timeout_s=settings.search_timeout,
        max_results=settings.search_max_results,
        retry_after_s=settings.search_retry_after,
    )


def normalize_query(query: str) -> str:
    """Whitespace collapsed, cut to ``MAX_QUERY_CHARS`` at a word boundary."""
    text = collapse_spaces(query)
    if len(text) <= MAX_QUERY_CHARS:
        return text
    cut = text.rfind(" ", 0, MAX_QUERY_CHARS)
    return text[: cut if cut > 0 else MAX_QUERY_CHARS]


def _call_with_timeout(func: Callable[[], Sequence[Source]], timeout: float, name: str) -> Sequence[Source]:
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as e:
            box["error"] = e
        finally:
            done.set()

    # A daemon thread, not an executor: a provider stuck past its timeout must not hold up
    # the answer, nor the interpreter's exit.
    threading.Thread(target=target, name=f"search-{name}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"no answer within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _clean(raw: Sequence[Source], provider: str) -> list[Source]:
    out: list[Source] = []
    seen: set[str] = set()
    for s in raw:
        if not isinstance(s, Source) or not s.url or s.url in seen:
            continue
        seen.add(s.url)
        title = collapse_spaces(s.title) or s.url
        snippet = s.snippet.strip()[:_MAX_SNIPPET_CHARS]
        out.append(Source(title, s.url, snippet, s.provider or provider, s.score))
    return out


def _timeout_detail(e: TimeoutError, timeout: float) -> str:
    text = str(e)
    return text if text else f"no answer within {timeout:g}s"


def _note(attempts: Sequence[ProviderAttempt]) -> str:
    ran = [a.provider for a in attempts if a.status == "empty"]
    failed = [
        f"{a.provider} ({a.status}: {_bare(a.detail)})" for a in attempts if a.status in ("error", "timeout", "skipped")
    ]
    unavailable = [f"{a.provider} ({_bare(a.detail)})" for a in attempts if a.status == "unavailable"]
    if ran:
        note = f"No sources found for this query (searched: {', '.join(ran)})."
    elif failed:
        note = "No sources: every search provider failed."
    else:
        note = "No search provider is available."
    details = failed + unavailable
    return f"{note} {'; '.join(details)}." if details else note


def _bare(detail: str | None) -> str:
    return (detail or "no detail").rstrip(". ")
