"""Ask llama.cpp's own grammar engine whether a GBNF grammar accepts a given text.

The text is tokenized with the real Gemma vocabulary and fed token by token through a grammar
sampler exactly as generation would (check the token, then accept it); the text is accepted
when every token passes and end-of-generation is allowed at the end. This tests grammars
against the engine that enforces them, not against a re-implementation.
"""

from __future__ import annotations

import ctypes
import random
from pathlib import Path

import llama_cpp
import numpy as np

from gemma_local.engine import rpc

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarProbe:
    """Grammar acceptance checks on one vocabulary (vocab-only model load: no weights in memory)."""

    def __init__(self, model_path: Path) -> None:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        # Local devices only: an RPC test earlier in the session registered workers that are gone.
        self._devices = rpc.model_devices(())
        if self._devices is not None:
            params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        self._model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
        assert self._model, f"could not load the vocabulary of {model_path}"
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        assert n >= 0
        return list(buf[:n])

    def compiles(self, grammar: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if sampler:
            llama_cpp.llama_sampler_free(sampler)
        return bool(sampler)

    def accepts(self, grammar: str, text: str) -> bool:
        """True when ``grammar`` allows generating exactly ``text`` and then stopping.

        Raises:
            ValueError: the grammar does not compile.
        """
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise ValueError("grammar does not compile")
        try:
            for token in [*self.tokenize(text), self.eos]:
                if not self._allowed(sampler, token):
                    return False
                if token != self.eos:
                    llama_cpp.llama_sampler_accept(sampler, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(sampler)

    @staticmethod
    def _allowed(sampler, token: int) -> bool:
        one = np.zeros(1, dtype=_TOKEN_DATA)
        one[0] = (token, 0.0, 0.0)
        arr = llama_cpp.llama_token_data_array(one.ctypes.data_as(llama_cpp.llama_token_data_p), 1, -1, False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
        return bool(np.isfinite(one[0]["logit"]))

    def random_walk(self, grammar: str, rng: random.Random, max_steps: int = 400) -> str | None:
        """A random text the grammar allows, built from single characters and a few JSON pieces.

        At each step one allowed token is picked at random (closing quotes and brackets are
        preferred in the second half, so walks tend to finish); returns None when the walk
        gets no end within ``max_steps``.
        """
        ids, pieces = self._alphabet()
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise ValueError("grammar does not compile")
        out: list[str] = []
        try:
            for step in range(max_steps):
                cand = np.zeros(len(ids) + 1, dtype=_TOKEN_DATA)
                cand["id"][:-1] = ids
                cand["id"][-1] = self.eos
                arr = llama_cpp.llama_token_data_array(
                    cand.ctypes.data_as(llama_cpp.llama_token_data_p), len(cand), -1, False
                )
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
                allowed = [int(t) for t in cand["id"][np.isfinite(cand["logit"])]]
                can_end = self.eos in allowed
                allowed = [t for t in allowed if t != self.eos]
                late = step > max_steps // 2
                if can_end and (late or not allowed or rng.random() < 0.5):
                    return "".join(out)
                if not allowed:
                    return None  # no piece of the alphabet fits here
                closers = [t for t in allowed if pieces[t] in ('"', "}", "]")]
                token = rng.choice(closers if late and closers and rng.random() < 0.7 else allowed)
                llama_cpp.llama_sampler_accept(sampler, token)
                out.append(pieces[token])
            return None
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def _alphabet(self) -> tuple[np.ndarray, dict[int, str]]:
        if getattr(self, "_pieces", None) is None:
            texts = [chr(c) for c in range(32, 127)] + ["\n", "é", "€", "😀"]
            texts += ['": ', '", "', "true", "false", "null", "\\n", '\\"', "2024", ".5"]
            pieces = {}
            for text in texts:
                tokens = self.tokenize(text)
                if len(tokens) == 1:
                    pieces[tokens[0]] = text
            self._pieces = pieces
            self._ids = np.array(list(pieces), dtype=np.int32)
        return self._ids, self._pieces

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None
