"""Hosted web search, served by the search hook: the search tool of the APIs, working offline.

A request may offer the APIs' own search tool (Responses ``web_search``, Anthropic
``web_search_20250305``). The model is offered it as one more function, ``web_search(query)``;
when it calls it, the pipeline (not the client) runs the query through the search hook's
providers — the local index and ZIM archives, and online providers only when configured and
the request allows the network — hands the numbered sources back to the model as the call's
result, and lets it answer. Each API then reports the search as its own items (a
``web_search_call``; ``server_tool_use`` + ``web_search_tool_result``) and the answer's ``[n]``
as citations of those sources.

The results go into the conversation after the call, where a client's tool result would go:
the prompt only grows at its end, so the prefix cache keeps everything before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gemma_local.engine.tools import ToolSpec
from gemma_local.search import (
    Citation,
    ProviderChain,
    SearchOutcome,
    Source,
    build_sources_prompt,
    citation_spans,
    run_search,
)
from gemma_local.search.registry import provider_spec

#: Tokens the sources of one search may take in the prompt.
SOURCES_BUDGET = 1536

_PARAMETERS: dict[str, Any] = {
    "type": "object",
    # Bounded: under a forcing grammar a small model can write a query until its token limit.
    "properties": {"query": {"type": "string", "description": "What to search for.", "maxLength": 120}},
    "required": ["query"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class HostedSearch:
    """The hosted search tool a request offers.

    Args:
        name: the function name the model calls it by (and the Anthropic tool's name).
        online: online providers may be asked (OpenAI's ``external_web_access: false`` says
            no: the local index and ZIM archives only).
        max_uses: searches one answer may run (Anthropic's ``max_uses``); a call past it ends
            the answer.
        allowed_domains: when given, only sources whose URL host is one of these (or under
            one) are kept.
    """

    name: str = "web_search"
    online: bool = True
    max_uses: int = 3
    allowed_domains: tuple[str, ...] = ()

    def spec(self) -> ToolSpec:
        """The function the model is offered."""
        return ToolSpec(
            self.name,
            "Search the web and the user's documents for current or specific information. Returns numbered "
            "sources; cite them in your answer as [1], [2].",
            _PARAMETERS,
        )


@dataclass(frozen=True)
class SearchResult:
    """One search the model ran: what it asked, what was found, what it was given."""

    call_id: str
    query: str
    outcome: SearchOutcome
    #: The sources given to the model, numbered 1..n in this order.
    sources: tuple[Source, ...] = ()
    #: The call's result as the model reads it.
    text: str = ""

    def cite(self, answer: str) -> list[Citation]:
        """Where ``answer`` cites these sources as ``[n]``."""
        return citation_spans(answer, self.sources)


def offline_only(chain: ProviderChain) -> ProviderChain:
    """``chain`` without the providers that need the network."""
    providers = [p for p in chain.providers if not getattr(provider_spec(p.name), "online", False)]
    return ProviderChain(providers, timeout_s=chain.timeout_s, max_results=chain.max_results)


def run_hosted_search(
    call_id: str, query: str, search: HostedSearch, chain: ProviderChain, count_tokens: Any
) -> SearchResult:
    """Run one search for the model; never raises (no results is a result that says why).

    Blocks for up to one timeout per provider: the pipeline runs it in a worker thread.
    """
    outcome = run_search(query, chain if search.online else offline_only(chain))
    sources = [s for s in outcome.sources if _allowed(s.url, search.allowed_domains)]
    context, used = build_sources_prompt(sources, SOURCES_BUDGET, count_tokens)
    text = context or f"No results. {outcome.explain(used) or ''}".strip()
    return SearchResult(call_id=call_id, query=query, outcome=outcome, sources=tuple(used), text=text)


def _allowed(url: str, domains: tuple[str, ...]) -> bool:
    if not domains:
        return True
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    return any(host == d.lower() or host.endswith("." + d.lower()) for d in domains)
