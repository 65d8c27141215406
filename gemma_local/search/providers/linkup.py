"""The ``linkup`` provider: the Linkup web search API through the official ``linkup-sdk``.

Used when ``LINKUP_API_KEY`` is set. The SDK's ``LinkupClient(api_key=…, base_url=…)`` takes
the API root as a constructor argument, so ``GEMMA_LOCAL_LINKUP_BASE_URL`` (a proxy, or the
tests' local server) needs no patching. We ask for ``outputType="searchResults"`` and map
each text result (``name``, ``url``, ``content``) to a source; image results are dropped.
Offline, the SDK's HTTP request fails at once (no DNS), and the chain moves on.
"""

from __future__ import annotations

from typing import Any, Literal

from gemma_local.errors import MissingDependencyError, SearchProviderError
from gemma_local.search.types import Source

DEFAULT_BASE_URL = "https://api.linkup.so/v1"
LinkupDepth = Literal["fast", "standard", "deep"]
_MAX_SNIPPET_CHARS = 4000


class LinkupProvider:
    """Web search through Linkup.

    Args:
        api_key: The Linkup API key.
        base_url: The API root (``…/v1``).
        depth: Linkup's search depth; ``standard`` answers in a few seconds.
    """

    name = "linkup"

    def __init__(self, api_key: str, *, base_url: str = DEFAULT_BASE_URL, depth: LinkupDepth = "standard") -> None:
        self._api_key = api_key
        self.base_url = base_url
        self.depth: LinkupDepth = depth

    def search(self, query: str, *, limit: int, timeout: float) -> list[Source]:
        """One Linkup ``/search`` call; no result is ``[]``, any failure a provider error."""
        try:
            import linkup
        except ImportError as e:
            raise MissingDependencyError("linkup-sdk", provider=self.name) from e
        client = linkup.LinkupClient(api_key=self._api_key, base_url=self.base_url)
        try:
            response: Any = client.search(
                query, depth=self.depth, output_type="searchResults", max_results=limit, timeout=timeout
            )
        except linkup.LinkupNoResultError:
            return []
        except linkup.LinkupTimeoutError as e:
            raise TimeoutError(f"Linkup did not answer within {timeout}s") from e
        except linkup.LinkupAuthenticationError as e:
            raise SearchProviderError(
                "Linkup rejected the API key; check LINKUP_API_KEY.", provider=self.name
            ) from e
        except Exception as e:  # the SDK raises one class per API error, plus httpx's and pydantic's
            raise SearchProviderError(f"Linkup search failed: {type(e).__name__}: {e}", provider=self.name) from e
        sources = [
            Source(r.name or r.url, r.url, r.content[:_MAX_SNIPPET_CHARS], self.name)
            for r in response.results
            if getattr(r, "type", None) == "text"
        ]
        return sources[:limit]
