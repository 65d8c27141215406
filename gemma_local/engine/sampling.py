"""SamplingParams → a llama.cpp sampler chain, one per request.

The chain order follows llama.cpp's common defaults: logit bias, penalties, then the truncation
samplers, temperature and finally the seeded draw (or greedy at temperature 0). Each request
owns its chain, so penalties and grammar state never leak between requests.

A grammar is *not* a link of that chain. Checking a grammar against all 262k tokens of Gemma's
vocabulary costs 0.1-0.8 s per token on a laptop CPU, many times the forward pass of a small
model, so :class:`SamplerChain` samples the way llama.cpp's own ``common_sampler`` does: draw a
token without the grammar, check only that token, and only when the grammar rejects it mask
the candidates and draw again. A draw that is rejected and redrawn from the masked
distribution picks each allowed token with probability exactly p/Z, the constrained
distribution (up to the truncation samplers, which see the masked set on the redraw). At
temperature 0 the redraw checks the best-scoring candidates first and falls back to the whole
vocabulary only when none of them is allowed, which gives the same token as a full check.
"""

from __future__ import annotations

import ctypes
import random

import llama_cpp
import numpy as np

from gemma_local.engine.model import token_piece
from gemma_local.engine.types import SamplingParams
from gemma_local.errors import GenerationError, InvalidRequestError

_MAX_SEED = 0xFFFFFFFF
#: numpy twin of ``llama_token_data`` (id, logit, p), so candidate arrays are filled in bulk.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
#: How many best candidates a greedy redraw checks against the grammar before the whole vocabulary.
_GREEDY_SHORTLIST = 512


class SamplerChain:
    """Owns a ``llama_sampler`` chain (and a grammar sampler, when the request has one); free with :meth:`close`."""

    def __init__(self, params: SamplingParams, *, vocab, n_vocab: int, default_seed: int | None = None):
        self._chain = None
        self._pre = None
        self._post = None
        self._grammar = None
        self._n_vocab = n_vocab
        self._greedy = params.temperature <= 0.0
        self._trigger: bytes | None = None
        self._constrained = False
        # Greedy with at most a logit bias is an argmax, and no sampler keeps state:
        # llama_sampler_sample would first build a 262k-entry candidate array (~0.8 ms a
        # token on a laptop CPU); numpy's argmax takes a tenth of that.
        self._argmax_only = self._greedy and not _has_penalties(params)
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64)
        self._bias = np.fromiter(params.logit_bias.values(), dtype=np.float32)
        self.seed = _resolve_seed(params.seed, default_seed)
        try:
            if params.grammar:
                self._grammar = _init_grammar(vocab, params.grammar)
                # Split so the grammar mask can go between the logit transforms and the draw.
                self._pre = _new_chain()
                self._post = _new_chain()
                self._add_transforms(self._pre, params, n_vocab=n_vocab)
                self._has_pre = llama_cpp.llama_sampler_chain_n(self._pre) > 0
                self._add_draw(self._post, params)
                self._ids = np.arange(n_vocab, dtype=np.int32)
                self._cand = np.zeros(n_vocab, dtype=_TOKEN_DATA)
                self._one = np.zeros(1, dtype=_TOKEN_DATA)
                # A lazy grammar waits for its trigger text (llama.cpp's own lazy mode would
                # abort the process on a trigger followed by text the grammar rejects).
                self._vocab = vocab
                self._trigger = params.grammar_trigger.encode("utf-8") if params.grammar_trigger else None
                self._constrained = self._trigger is None
                self._seen = b""
            if not self._constrained:
                # Free draws: no grammar, or a lazy one still waiting for its trigger.
                self._chain = _new_chain()
                self._add_transforms(self._chain, params, n_vocab=n_vocab)
                self._add_draw(self._chain, params)
        except Exception:
            self.close()
            raise

    @staticmethod
    def _add(chain, sampler: int | None) -> None:
        if not sampler:
            raise InvalidRequestError("llama.cpp could not create a sampler for these sampling options.")
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    def _add_transforms(self, chain, p: SamplingParams, *, n_vocab: int) -> None:
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
            self._add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), biases))
        if _has_penalties(p):
            self._add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                ),
            )

    def _add_draw(self, chain, p: SamplingParams) -> None:
        if p.temperature <= 0.0:
            self._add(chain, llama_cpp.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            self._add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            self._add(chain, llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            self._add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        self._add(chain, llama_cpp.llama_sampler_init_temp(p.temperature))
        self._add(chain, llama_cpp.llama_sampler_init_dist(self.seed))

    def sample(self, ctx, batch_index: int) -> int:
        """Pick the next token from the logits at ``batch_index`` and record it in the chain.

        Raises:
            GenerationError: the grammar allows no token at all here (an unsatisfiable grammar).
        """
        if not self._constrained:
            token = self._free_draw(ctx, batch_index)
            if self._grammar is not None:
                # A lazy grammar: keep its own chains in step (penalties see every token).
                for sampler in (self._pre, self._post):
                    llama_cpp.llama_sampler_accept(sampler, token)
                if self._trigger is not None:
                    self._watch(token)
            return token
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(self._n_vocab,))
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits  # ("p" is only ever written by the samplers)
        transformed = logits
        if self._has_pre:
            _apply(self._pre, cand)
            transformed = cand["logit"].copy()
        token = self._draw(cand)
        if not self._allowed(token):
            token = self._redraw(transformed)
        for sampler in (self._grammar, self._pre, self._post):
            llama_cpp.llama_sampler_accept(sampler, token)
        return token

    def _free_draw(self, ctx, batch_index: int) -> int:
        if not self._argmax_only:
            return llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(self._n_vocab,))
        if self._bias.size:
            logits = logits.copy()  # the context's own logits stay unbiased (logprobs read them)
            logits[self._bias_ids] += self._bias
        # First of equal maxima, as llama.cpp's greedy sampler picks.
        return int(logits.argmax())

    def _watch(self, token: int) -> None:
        """Free decoding under a lazy grammar: switch the grammar on once the trigger appears.

        The grammar is fed the output from the start of the trigger on (the token that completed
        it may carry more text), checked token by token; if that text already breaks the
        grammar, decoding stays free for good rather than forcing an impossible continuation.
        """
        trigger = self._trigger
        assert trigger is not None
        self._seen += token_piece(self._vocab, token)
        start = self._seen.find(trigger)
        if start < 0:
            # Keep only what may still be the beginning of the trigger.
            self._seen = self._seen[max(0, len(self._seen) - len(trigger) + 1) :]
            return
        constrained, self._seen, self._trigger = self._seen[start:], b"", None
        for t in _tokenize(self._vocab, constrained):
            if not self._allowed(t):
                return
            llama_cpp.llama_sampler_accept(self._grammar, t)
        self._constrained = True

    def _draw(self, cand: np.ndarray) -> int:
        arr = _apply(self._post, cand)
        selected = (llama_cpp.llama_token_data * arr.size).from_address(ctypes.addressof(arr.data.contents))
        return int(selected[arr.selected].id)

    def _allowed(self, token: int) -> bool:
        self._one[0] = (token, 0.0, 0.0)
        _apply(self._grammar, self._one)
        return bool(np.isfinite(self._one[0]["logit"]))

    def _redraw(self, logits: np.ndarray) -> int:
        if self._greedy and self._n_vocab > _GREEDY_SHORTLIST:
            # The best allowed token among the best-scoring ones is the best allowed token overall.
            best = np.argpartition(-logits, _GREEDY_SHORTLIST)[:_GREEDY_SHORTLIST]
            short = np.zeros(len(best), dtype=_TOKEN_DATA)
            short["id"] = best
            short["logit"] = logits[best]
            _apply(self._grammar, short)
            if np.isfinite(short["logit"]).any():
                return self._checked(self._draw(short))
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        _apply(self._grammar, cand)
        if not np.isfinite(cand["logit"]).any():
            raise GenerationError("The output grammar allows no token at this point; generation cannot go on.")
        return self._checked(self._draw(cand))

    def _checked(self, token: int) -> int:
        # Accepting a token the grammar rejects aborts the process inside llama.cpp: never do it.
        if not self._allowed(token):
            raise GenerationError("Sampling picked a token the output grammar forbids (all allowed tokens masked).")
        return token

    def close(self) -> None:
        for name in ("_chain", "_pre", "_post", "_grammar"):
            sampler = getattr(self, name, None)
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
                setattr(self, name, None)

    def __del__(self) -> None:  # pragma: no cover - safety net; the scheduler closes explicitly
        self.close()


def _tokenize(vocab, data: bytes) -> list[int]:
    capacity = len(data) + 8
    buf = (llama_cpp.llama_token * capacity)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, capacity, False, False)
    return list(buf[: max(n, 0)])


def _has_penalties(p: SamplingParams) -> bool:
    return p.repeat_penalty != 1.0 or bool(p.frequency_penalty) or bool(p.presence_penalty)


def _new_chain():
    chain_params = llama_cpp.llama_sampler_chain_default_params()
    chain_params.no_perf = True
    return llama_cpp.llama_sampler_chain_init(chain_params)


def _init_grammar(vocab, grammar: str):
    _check_repetitions(grammar)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise InvalidRequestError("The output grammar could not be compiled.", param="grammar")
    return sampler


def _check_repetitions(grammar: str) -> None:
    """Refuse ``x{m,n}`` with m > n: llama.cpp's parser does not, and allocates until the process dies."""
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in '"[':  # skip a literal or a character class, escapes included
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and grammar[i] != close:
                i += 2 if grammar[i] == "\\" else 1
        elif c == "#":  # comment to the end of the line
            while i < n and grammar[i] != "\n":
                i += 1
        elif c == "{":
            end = grammar.find("}", i)
            lo, comma, hi = grammar[i + 1 : end].partition(",") if end > 0 else ("", "", "")
            if comma and lo.strip().isdigit() and hi.strip().isdigit() and int(lo) > int(hi):
                raise InvalidRequestError(
                    f"The output grammar repeats {{{lo},{hi}}}: the minimum is above the maximum.", param="grammar"
                )
        i += 1


def _apply(sampler, cand: np.ndarray) -> llama_cpp.llama_token_data_array:
    """Run ``sampler`` over the candidates in ``cand`` (in place) and return the array header."""
    arr = llama_cpp.llama_token_data_array(cand.ctypes.data_as(llama_cpp.llama_token_data_p), len(cand), -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
    return arr


def _resolve_seed(seed: int | None, default_seed: int | None) -> int:
    if seed is None:
        seed = default_seed
    if seed is None:
        return random.SystemRandom().randrange(_MAX_SEED)
    # OpenAI seeds are any int64; llama.cpp takes a uint32.
    return seed & _MAX_SEED
