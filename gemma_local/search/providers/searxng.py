"""The ``searxng`` provider: a self-hosted SearXNG instance's JSON API.

Set ``--searxng-url`` or ``GEMMA_LOCAL_SEARXNG_URL`` to the instance root (e.g.
``http://127.0.0.1:8888``). We call ``GET /search?q=…&format=json`` and map ``results[]``
(``title``, ``url``, ``content``). The instance must allow the JSON format (``search.formats``
in its ``settings.yml`` lists ``json``); otherwise it answers 403, and the error says so.
"""

from __future__ import annotations

import httpx

from gemma_local.errors import SearchProviderError
from gemma_local.search.types import Source

_MAX_SNIPPET_CHARS = 4000


class SearxngProvider:
    """Web search through a SearXNG instance.

    Args:
        base_url: The instance root, without ``/search``.
    """

    name = "searxng"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def search(self, query: str, *, limit: int, timeout: float) -> list[Source]:
        """One SearXNG query, first page of results."""
        try:
            response = httpx.get(
                f"{self.base_url}/search",
                params={"q": query, "format": "json", "pageno": 1},
                headers={"Accept": "application/json"},
                timeout=timeout,
                follow_redirects=True,
            )
        except httpx.TimeoutException as e:
            raise TimeoutError(f"SearXNG at {self.base_url} did not answer within {timeout}s") from e
        except httpx.HTTPError as e:
            raise SearchProviderError(f"SearXNG at {self.base_url} is unreachable: {e}", provider=self.name) from e
        if response.status_code == 403:
            raise SearchProviderError(
                f"SearXNG at {self.base_url} refused the JSON format (403); add `json` to "
                "`search.formats` in its settings.yml.",
                provider=self.name,
            )
        if response.status_code != 200:
            raise SearchProviderError(
                f"SearXNG at {self.base_url} answered HTTP {response.status_code}.", provider=self.name
            )
        try:
            results = response.json().get("results", [])
        except (ValueError, AttributeError) as e:
            raise SearchProviderError(f"SearXNG at {self.base_url} sent no JSON results.", provider=self.name) from e
        sources: list[Source] = []
        for r in results:
            url = r.get("url") if isinstance(r, dict) else None
            if not isinstance(url, str) or not url:
                continue
            title = str(r.get("title") or url)
            snippet = str(r.get("content") or "")[:_MAX_SNIPPET_CHARS]
            score = r.get("score")
            rank = float(score) if isinstance(score, int | float) else None
            sources.append(Source(title, url, snippet, self.name, rank))
            if len(sources) == limit:
                break
        return sources
