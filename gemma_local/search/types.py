"""The search hook's vocabulary: a source, a provider, one provider's attempt, the outcome.

A provider is anything with a ``name`` and a ``search(query, *, limit, timeout)`` method that
returns :class:`Source` objects (see :class:`SearchProvider`). Providers raise
``SearchProviderError`` (or ``ProviderUnavailableError`` when they cannot run at all) and
``TimeoutError``; the chain turns every failure into a :class:`ProviderAttempt` and moves on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

AttemptStatus = Literal["ok", "empty", "timeout", "error", "unavailable", "skipped"]


@dataclass(frozen=True, slots=True)
class Source:
    """One search result, as the model and the user will see it.

    Attributes:
        title: A human title (page title, document heading, file name).
        url: Where it lives, always a URI: ``https://…`` for the web, ``file:///…`` for the
            user's documents, ``zim://ARCHIVE/PATH`` for an entry of an offline archive.
        snippet: The extract given to the model (plain text, already trimmed by the provider).
        provider: The provider's name (``local``, ``zim``, ``linkup``, ``searxng``, …).
        score: The provider's own relevance score when it has one (not comparable across
            providers).
    """

    title: str
    url: str
    snippet: str
    provider: str
    score: float | None = None

    @property
    def location(self) -> str:
        """What to show a person: the filesystem path for ``file://`` URLs, else the URL."""
        parsed = urlparse(self.url)
        if parsed.scheme == "file":
            return unquote(parsed.path)
        return self.url


@runtime_checkable
class SearchProvider(Protocol):
    """What every search provider implements; register one with ``register_provider``.

    ``search`` returns at most ``limit`` sources, best first, and should give up by itself
    after ``timeout`` seconds (the chain also stops waiting then). It raises
    ``ProviderUnavailableError`` when it cannot run here (nothing indexed, a dependency
    missing), ``SearchProviderError`` when it failed, and ``TimeoutError`` when it timed out.
    It must be safe to call from several threads at once.
    """

    name: str

    def search(self, query: str, *, limit: int, timeout: float) -> Sequence[Source]:
        """Return up to ``limit`` sources for ``query``, best first."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderAttempt:
    """What happened when the chain asked one provider."""

    provider: str
    status: AttemptStatus
    results: int = 0
    elapsed_s: float = 0.0
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for response metadata and logs."""
        return {
            "provider": self.provider,
            "status": self.status,
            "results": self.results,
            "elapsed_ms": round(self.elapsed_s * 1000, 1),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    """The result of one hook search: never an exception, always something to report.

    Attributes:
        query: The query as sent to the providers (normalised).
        sources: The sources found, best first (empty when nothing was found).
        provider: The provider whose results these are, ``None`` when there are none.
        attempts: One entry per provider asked, in order.
        note: A sentence for the user when there are no sources (why), else ``None``.
    """

    query: str
    sources: tuple[Source, ...] = ()
    provider: str | None = None
    attempts: tuple[ProviderAttempt, ...] = field(default_factory=tuple)
    note: str | None = None

    @property
    def found(self) -> bool:
        """Whether any source was found."""
        return bool(self.sources)

    def explain(self, used: Sequence[Source] | None = None) -> str | None:
        """Why the answer has no sources (``None`` when it has some).

        Args:
            used: The sources actually put into the prompt; when sources were found but none
                fitted, that is the reason given.
        """
        if used is None or used or not self.sources:
            return self.note
        return (
            f"{len(self.sources)} sources were found ({self.provider}), but the context window had no "
            "room for them; shorten the conversation or give the model a larger context (--ctx)."
        )

    def metadata(self, used: Sequence[Source] | None = None) -> dict[str, Any]:
        """JSON-ready summary for usage/metadata fields of a response.

        Args:
            used: The sources actually put into the prompt (``build_sources_prompt``'s second
                value); defaults to every source found.
        """
        used_count = len(self.sources if used is None else used)
        return {
            "provider": self.provider,
            "sources_found": len(self.sources),
            "sources_used": used_count,
            "note": self.explain(used),
            "attempts": [a.as_dict() for a in self.attempts],
        }
