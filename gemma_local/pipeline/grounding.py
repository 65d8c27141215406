"""The search hook applied to a generation request (``web_search_linkup`` / ``--search``).

The glue between retrieval (``gemma_local.search``, which knows nothing of models) and the
engine: the latest user message is the query, the sources found go in front of that message
as numbered, clearly delimited data within a token budget that leaves room for the answer,
and the "Sources" footer, citation spans and metadata are computed from what the model was
actually given. The request pipeline calls this one module for the CLI and every HTTP API, so the hook
behaves the same everywhere. Searching never fails a request: without results the request goes through
unchanged and the footer/metadata say why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from gemma_local.engine import ChatMessage, Engine, GenerationRequest, TextPart
from gemma_local.search import (
    Citation,
    ProviderChain,
    SearchOutcome,
    Source,
    build_sources_prompt,
    citation_spans,
    format_footer,
    run_search,
    sources_budget,
)


@dataclass(frozen=True)
class Grounding:
    """A request with its sources in the prompt, and what to tell the user about them."""

    request: GenerationRequest
    outcome: SearchOutcome
    sources: tuple[Source, ...]
    #: Appended to the answer (and sent as the last stream delta); None with disable_formatting.
    footer: str | None

    def citations(self, answer_text: str) -> list[Citation]:
        """Where the answer (without the footer) cites each source as [n]."""
        return citation_spans(answer_text, self.sources)

    @property
    def metadata(self) -> dict[str, Any]:
        """Provider used, sources found and used, attempts, and a note when there were none."""
        return self.outcome.metadata(self.sources)


def latest_user_text(request: GenerationRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user" and message.plain_text.strip():
            return message.plain_text.strip()
    return ""


def ground(
    request: GenerationRequest, engine: Engine, chain: ProviderChain, *, disable_formatting: bool = False
) -> Grounding:
    """Search for the latest user message and put what fits into the request's prompt."""
    outcome = run_search(latest_user_text(request), chain)
    return _apply(request, engine, outcome, disable_formatting)


async def aground(
    request: GenerationRequest, engine: Engine, chain: ProviderChain, *, disable_formatting: bool = False
) -> Grounding:
    """:func:`ground` without blocking the event loop (search and tokenizing run in a thread)."""
    return await asyncio.to_thread(ground, request, engine, chain, disable_formatting=disable_formatting)


def _apply(request: GenerationRequest, engine: Engine, outcome: SearchOutcome, disable_formatting: bool) -> Grounding:
    used: list[Source] = []
    grounded = request
    if outcome.sources and request.messages:
        prompt_tokens = len(engine.prompt_tokens(request))
        n_ctx = engine.info.n_ctx_per_slot
        # Room for the answer: its output limit, but never more than half the context, so a
        # small context still takes some sources (the answer may then end at the context's end).
        reserve = min(request.max_tokens or n_ctx, n_ctx // 2)
        budget = sources_budget(n_ctx, prompt_tokens, reserve_for_answer=reserve)
        context, used = build_sources_prompt(
            outcome.sources, budget, lambda text: len(engine.model.tokenize(text, special=False))
        )
        if context:
            grounded = request.model_copy(update={"messages": _prepend_to_latest_user(request.messages, context)})
    footer = None if disable_formatting else format_footer(used, note=outcome.explain(used))
    return Grounding(request=grounded, outcome=outcome, sources=tuple(used), footer=footer)


def _prepend_to_latest_user(messages: tuple[ChatMessage, ...], context: str) -> tuple[ChatMessage, ...]:
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].role == "user":
            out[i] = replace(out[i], content=(TextPart(context), *out[i].content))
            break
    return tuple(out)
