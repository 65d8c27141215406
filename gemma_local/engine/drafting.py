"""Draft tokens for speculative decoding: prompt lookup (n-grams of the request's own tokens).

(The other drafter, a small model of the same vocabulary, is :mod:`gemma_local.engine.draft_model`;
the rule below keeps either exact.)

Each step a generating slot may add, after its next token, a few *draft* tokens guessed from
its own prompt and output: the tokens that followed the latest earlier occurrence of the
last few tokens. The scheduler decodes them in the same ``llama_decode`` as every other
slot's tokens, samples each position in turn with the request's own sampler, and keeps the
drafts up to the first one that differs from what was sampled.

Why that keeps the output exact, greedy or not: every kept token *is* the token the sampler
drew from the target model's logits at its position, given exactly the tokens before it, so
the output is distributed as without speculation. For a draft that is one fixed token (as
prompt lookup's are) this is the speculative-sampling rejection rule itself: the draft ``d``
is kept with probability ``p(d)``, and on rejection the token comes from ``p`` without ``d``,
renormalised. A grammar, penalties and stop strings see the tokens one by one as usual.

:class:`DraftPacer` adapts how many tokens a slot drafts: more while drafts are accepted,
fewer after a miss, none for a while when acceptance stays low (a rejected draft costs
compute and gains nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gemma_local.errors import DraftModelError

#: The longest and shortest n-grams looked up (longest first: a longer match predicts better).
NGRAM_MAX = 4
NGRAM_MIN = 2


class NgramDrafter:
    """Prompt-lookup drafts over one request's tokens (prompt, then each sampled token)."""

    def __init__(self, tokens: list[int]) -> None:
        self._tokens: list[int] = []
        #: n-gram → where the token after its latest complete occurrence sits.
        self._follows: dict[tuple[int, ...], int] = {}
        for token in tokens:
            self.push(token)

    def push(self, token: int) -> None:
        """Append a token (the n-grams ending just before it now have a known continuation)."""
        tokens = self._tokens
        end = len(tokens)
        for n in range(NGRAM_MIN, NGRAM_MAX + 1):
            if end >= n:
                self._follows[tuple(tokens[end - n : end])] = end
        tokens.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the last n tokens."""
        tokens = self._tokens
        if k <= 0:
            return []
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(tokens) <= n:
                continue
            at = self._follows.get(tuple(tokens[-n:]))
            if at is None:
                continue
            out = []
            for token in tokens[at : at + k]:
                if token < 0:  # an image's placeholder: never a real token
                    break
                out.append(token)
            if out:
                return out
        return []


@dataclass
class DraftPacer:
    """How many tokens one slot drafts next; adapts to how many it had accepted."""

    max_len: int
    length: int = 4
    acceptance: float = 0.5  # moving average of accepted / drafted
    pause: int = 0  # steps left without drafting

    #: Below this average acceptance, drafting pauses for ``PAUSE_STEPS`` steps.
    LOW_ACCEPTANCE = 0.25
    PAUSE_STEPS = 16

    def __post_init__(self) -> None:
        self.length = max(1, min(self.length, self.max_len))

    def budget(self) -> int:
        if self.pause > 0:
            self.pause -= 1
            return 0
        return self.length

    def record(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        self.acceptance = 0.7 * self.acceptance + 0.3 * (accepted / drafted)
        if accepted == drafted:
            self.length = min(self.max_len, self.length * 2)
        else:
            self.length = max(1, accepted + 1)
        if self.acceptance < self.LOW_ACCEPTANCE:
            self.pause = self.PAUSE_STEPS
            self.acceptance = 0.5  # give it another chance after the pause


#: Which drafter a request gets: prompt lookup, or the draft model (:mod:`gemma_local.engine.draft_model`).
Drafter = Literal["ngram", "model"]


@dataclass(frozen=True)
class SpeculationPolicy:
    """Whether and how much the scheduler drafts.

    ``max_busy`` is the most generating slots at which drafting still pays: a batch that
    already carries a token for each of many slots is compute-bound, and verifying drafts
    then costs more than it saves.

    ``mode``: ``"off"``; ``"ngram"`` (prompt lookup for every request); ``"draft"`` (the
    model at ``draft_model``, a GGUF path, for every request); ``"auto"`` (greedy requests
    only: the draft model when one is given, else prompt lookup).

    Raises:
        DraftModelError: ``mode="draft"`` without a ``draft_model``.
    """

    mode: str = "off"
    draft_max: int = 8
    max_busy: int = 2
    draft_model: str | None = None

    def __post_init__(self) -> None:
        if self.mode == "draft" and not self.draft_model:
            raise DraftModelError(
                "--speculative draft needs a draft model: pass --draft-model NAME|PATH (or set "
                "GEMMA_LOCAL_DRAFT_MODEL), e.g. --draft-model gemma-3-270m, or use --speculative ngram.",
                reason="missing",
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self.draft_max > 0

    @property
    def uses_draft_model(self) -> bool:
        """Whether a draft model is loaded for this policy (``draft``, or ``auto`` with one given)."""
        return self.enabled and self.draft_model is not None and self.mode in ("draft", "auto")

    def drafter_for(self, temperature: float) -> Drafter | None:
        """Which drafter a request at ``temperature`` gets (None: it does not draft). Under
        ``auto`` only greedy requests draft, where the bench shows no loss (sampled prose
        accepts too few drafts to pay on a CPU)."""
        if not self.enabled or (self.mode == "auto" and temperature > 0.0):
            return None
        return "model" if self.uses_draft_model else "ngram"

    def drafts_for(self, temperature: float) -> bool:
        """Whether a request at ``temperature`` drafts at all."""
        return self.drafter_for(temperature) is not None
