"""SamplingParams → a llama.cpp sampler chain, one per request.

The chain order follows llama.cpp's common defaults: logit bias, grammar, penalties, then the
truncation samplers, temperature and finally the seeded draw (or greedy at temperature 0).
Each request owns its chain, so penalties and grammar state never leak between requests.
"""

from __future__ import annotations

import random

import llama_cpp

from gemma_local.engine.types import SamplingParams
from gemma_local.errors import InvalidRequestError

_MAX_SEED = 0xFFFFFFFF


class SamplerChain:
    """Owns a ``llama_sampler`` chain; free it with :meth:`close`."""

    def __init__(self, params: SamplingParams, *, vocab: int, n_vocab: int, default_seed: int | None = None):
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(chain_params)
        self.seed = _resolve_seed(params.seed, default_seed)
        try:
            self._build(params, vocab=vocab, n_vocab=n_vocab)
        except Exception:
            self.close()
            raise

    def _add(self, sampler: int | None) -> None:
        if not sampler:
            raise InvalidRequestError("llama.cpp could not create a sampler for these sampling options.")
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, p: SamplingParams, *, vocab, n_vocab: int) -> None:
        if p.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(p.logit_bias))()
            for i, (token, bias) in enumerate(p.logit_bias.items()):
                if not 0 <= token < n_vocab:
                    raise InvalidRequestError(
                        f"logit_bias names token {token}, outside this model's vocabulary (0..{n_vocab - 1}).",
                        param="logit_bias",
                    )
                biases[i].token = token
                biases[i].bias = bias
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), biases))
        if p.grammar:
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, p.grammar.encode("utf-8"), b"root")
            if not sampler:
                raise InvalidRequestError("The output grammar could not be compiled.", param="grammar")
            self._add(sampler)
        if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                )
            )
        if p.temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(p.temperature))
        self._add(llama_cpp.llama_sampler_init_dist(self.seed))

    def sample(self, ctx, batch_index: int) -> int:
        """Pick the next token from the logits at ``batch_index`` and record it in the chain."""
        return llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index)

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:  # pragma: no cover - safety net; the scheduler closes explicitly
        self.close()


def _resolve_seed(seed: int | None, default_seed: int | None) -> int:
    if seed is None:
        seed = default_seed
    if seed is None:
        return random.SystemRandom().randrange(_MAX_SEED)
    # OpenAI seeds are any int64; llama.cpp takes a uint32.
    return seed & _MAX_SEED
