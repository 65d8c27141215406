"""Draft-model speculation: a small model of the same vocabulary guesses each slot's next tokens.

The draft model (e.g. Gemma 3 270M drafting for the 27B) runs in a llama.cpp context of its
own, with one sequence per target slot (sequence ``i`` drafts for the target's slot ``i``) and
its own KV cache, kept by a :class:`~gemma_local.engine.kv_slots.SlotCache` of its own: the
same cuts, copies and sliding-window checkpoints as the target's, so its prefix reuse is as
good as the target's.

Its KV follows the target's record lazily. Each step the scheduler says, per slot, which
tokens the target's sequence holds plus the next token (sampled, not yet decoded): the draft
sequence is cut back to what it shares with that (a new prompt that diverges, a prefix
reused or copied, drafts the target rejected), and what is missing is decoded again, at
most one micro-batch per step (a long prompt catches up over several steps, while the target
processes it; a slot whose draft is still behind just does not draft that step). Then ``k``
tokens are drafted for every drafting slot together: one ``llama_decode`` per draft position
across the slots, each token the argmax of the draft's logits.

Why that keeps the target's output exact, greedy or sampled: the drafts are a fixed token
sequence chosen before the target looks at them (a function of the context only, never of
the request's sampler), so the scheduler's verification rule applies unchanged. It samples
each position with the request's own sampler from the *target's* logits and keeps a draft
only while it equals that sample: every kept token is the one the target would have drawn
there anyway, and for a fixed draft token ``d`` this is the speculative-sampling rejection
rule (``d`` kept with probability ``p(d)``, otherwise a draw from ``p`` without ``d``,
renormalised). The draft's own probabilities never enter it: a greedy draft only changes how
many tokens are kept, not which.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import llama_cpp
import numpy as np

from gemma_local.engine.kv_slots import MIN_PREFIX_COPY, CheckpointPolicy, SlotCache, common_prefix_len
from gemma_local.engine.model import LlamaModel, check_gguf_file
from gemma_local.engine.vocab_match import VocabDescription, vocab_mismatch
from gemma_local.errors import DraftModelError, GemmaLocalError, ModelNotFoundError
from gemma_local.gguf import read_gguf_metadata

logger = logging.getLogger("gemma_local.engine")


@dataclass
class DraftRequest:
    """One slot's part of a drafting step.

    ``context``: the tokens the target's sequence holds, then its next token (sampled, not yet
    decoded); the drafts continue it. ``k``: tokens to draft (0: only catch up, e.g. while the
    target still processes the prompt). ``prompt_len``: where the prompt ends (a checkpoint is
    taken there, for the next request that shares it).
    """

    seq_id: int
    context: list[int]
    k: int
    prompt_len: int


class DraftModel:
    """A draft model loaded beside ``target``, one sequence per target slot.

    Args:
        path: the draft model's GGUF.
        target: the loaded model it drafts for (its slots, context and threads are matched).
        checkpoints: sliding-window checkpoints per draft sequence (the target's policy).

    Raises:
        ModelNotFoundError: no file at ``path``.
        DraftModelError: it cannot be loaded, or its vocabulary is not the target's.
    """

    def __init__(
        self, path: str | os.PathLike[str], target: LlamaModel, checkpoints: CheckpointPolicy | None = None
    ) -> None:
        self.path = Path(path)
        try:
            check_gguf_file(self.path)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"Draft model: {e.message}") from e
        except GemmaLocalError as e:
            raise DraftModelError(f"Draft model: {e.message}", path=str(self.path), reason="unreadable") from e
        p = target.params
        params = replace(
            p,
            n_ctx_per_seq=min(target.n_ctx_per_seq, _trained_context(self.path, target.n_ctx_per_seq)),
            n_threads=target.n_threads,
            n_threads_batch=target.n_threads_batch,
            # The draft is small: all of it on the GPU whenever the target uses one, never over RPC.
            gpu_layers=0 if p.gpu_layers == 0 else -1,
            rpc_servers=(),
            tensor_split=(),
            n_outputs_per_seq=1,
        )
        try:
            self.model = LlamaModel(self.path, params)
        except GemmaLocalError as e:
            raise DraftModelError(
                f"The draft model {self.path.name} could not be loaded: {e.message}", path=str(self.path), reason="load"
            ) from e
        try:
            mismatch = vocab_mismatch(VocabDescription.of(target.vocab), VocabDescription.of(self.model.vocab))
            if mismatch is not None:
                raise DraftModelError(
                    f"The draft model {self.path.name} cannot draft for {target.path.name}: {mismatch}. "
                    "A draft model must share the target's vocabulary (any Gemma 3 drafts for any other, "
                    "e.g. gemma-3-270m for gemma-3-27b).",
                    path=str(self.path),
                    reason="vocabulary",
                )
            self.cache = SlotCache(self.model, checkpoints)
        except Exception:
            self.model.close()
            raise
        self._step_tokens = min(self.model.n_batch, params.n_ubatch)
        self._batch = llama_cpp.llama_batch_init(self._step_tokens, 0, 1)
        #: Draft tokens must be ids the target has (sizes may differ by padding entries).
        self._n_vocab = min(self.model.n_vocab, target.n_vocab)
        self.decode_calls = 0

    # --- scheduler thread ----------------------------------------------------------------

    def start(self, seq_id: int, prompt: list[int]) -> None:
        """A request starts in the target's slot ``seq_id``: keep (or copy in) the longest exact
        prefix of ``prompt`` this draft sequence can have, so less of it is decoded again."""
        cache = self.cache
        slot = cache.slots[seq_id]
        reuse = {id(s): cache.reusable(s, common_prefix_len(s.tokens, prompt)) for s in cache.slots}
        donor = max(cache.slots, key=lambda s: reuse[id(s)])
        better = donor is not slot and reuse[id(donor)] >= reuse[id(slot)] + MIN_PREFIX_COPY
        if better and cache.copy(donor, slot, reuse[id(donor)]):
            return
        cache.truncate(slot, reuse[id(slot)])

    def clear(self, seq_id: int) -> None:
        self.cache.clear(self.cache.slots[seq_id])

    def propose(self, requests: list[DraftRequest]) -> list[list[int]]:
        """Draft for every request together; return each one's draft tokens (possibly none).

        Requests with ``k > 0`` come first for the catch-up's room; a failed decode costs the
        slots their drafts this step (and their draft KV), never the target's request.
        """
        cache = self.cache
        n_ctx = self.model.n_ctx_per_seq
        drafts: list[list[int]] = [[] for _ in requests]
        # 1. Cut each draft sequence back to what it shares with the target's context (at
        # least the last token is decoded again: its logits give the first draft).
        for r in requests:
            slot = cache.slots[r.seq_id]
            keep = min(common_prefix_len(slot.tokens, r.context), len(r.context) - 1)
            if keep < len(slot.tokens):
                cache.truncate(slot, keep)
        # 2. Catch up: decode what each sequence misses, one micro-batch in all.
        room = self._step_tokens
        chunks: list[tuple[int, list[int], bool]] = []  # request index, tokens, ends at its context's end
        for i in sorted(range(len(requests)), key=lambda i: requests[i].k <= 0):
            r = requests[i]
            slot = cache.slots[r.seq_id]
            start = len(slot.tokens)
            if room <= 0 or start >= len(r.context) or len(r.context) > n_ctx:
                continue
            end = min(len(r.context), start + room)
            mark = cache.next_mark(start)
            if mark is not None:
                end = min(end, mark)  # a checkpoint is due there
            if start < r.prompt_len < end and self._checkpoints_at(r.prompt_len):
                end = r.prompt_len  # and at the prompt's end
            chunks.append((i, r.context[start:end], end == len(r.context)))
            room -= end - start
        ready: list[int] = []  # requests whose first draft token can be read now
        if chunks:
            chunks.sort(key=lambda c: requests[c[0]].seq_id)  # sequence order: one pass over the weights
            outputs = self._decode(
                [(requests[i].seq_id, tokens, complete and requests[i].k > 0) for i, tokens, complete in chunks]
            )
            if outputs is None:
                return drafts
            for (i, _, complete), out in zip(chunks, outputs, strict=True):
                r = requests[i]
                slot = cache.slots[r.seq_id]
                cache.maybe_checkpoint(slot, prompt_done=len(slot.tokens) == r.prompt_len)
                if complete and out is not None and self._push(drafts[i], out, r.k):
                    ready.append(i)
        # 3. Draft: one decode per position, every ready sequence in it.
        # (A request whose k is 1 already has its draft; the last token drafted is never decoded.)
        going = [i for i in ready if len(drafts[i]) < requests[i].k]
        while going:
            going = [i for i in going if len(requests[i].context) + len(drafts[i]) <= n_ctx]
            outputs = self._decode([(requests[i].seq_id, [drafts[i][-1]], True) for i in going]) if going else None
            if outputs is None:
                break
            going = [i for i, out in zip(going, outputs, strict=True) if self._push(drafts[i], out, requests[i].k)]
        return drafts

    def clear_all(self) -> None:
        for slot in self.cache.slots:
            self.cache.clear(slot)

    def close(self) -> None:
        """Free the draft's context and weights. Only once the scheduler thread is gone."""
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self.model.close()

    # --- internals -------------------------------------------------------------------------

    def _decode(self, parts: list[tuple[int, list[int], bool]]) -> list[int | None] | None:
        """Decode ``(seq_id, tokens, wants_logits)`` parts in one call; return each part's row of
        logits (at its last token, None where not wanted), or None if the decode failed."""
        batch = self._batch
        n = 0
        rows: list[int | None] = []
        for seq_id, tokens, wants in parts:
            pos = len(self.cache.slots[seq_id].tokens)
            for j, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = wants and j == len(tokens) - 1
                n += 1
            rows.append(n - 1 if wants else None)
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.model.ctx, batch)
        self.decode_calls += 1
        self.cache.decoded()
        if rc != 0:
            logger.warning("draft model decode failed (llama_decode returned %d); no drafts this step", rc)
            for seq_id, _, _ in parts:
                self.clear(seq_id)
            return None
        for seq_id, tokens, _ in parts:
            self.cache.append(self.cache.slots[seq_id], tokens)
        return rows

    def _checkpoints_at(self, pos: int) -> bool:
        """Whether the cache would take a checkpoint at ``pos`` (past the window, checkpoints on)."""
        return self.cache.next_mark(0) is not None and pos > self.model.n_swa

    def _push(self, drafts: list[int], row: int, k: int) -> bool:
        """Append the draft's argmax at logits ``row``; return whether to draft one more after it."""
        ptr = llama_cpp.llama_get_logits_ith(self.model.ctx, row)
        token = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))[: self._n_vocab]))
        drafts.append(token)
        # After an end of generation the target stops too: nothing to draft beyond it.
        return len(drafts) < k and not self.model.is_end_of_generation(token)


def _trained_context(path: Path, default: int) -> int:
    """The context the draft model was trained for: its context never exceeds it."""
    try:
        meta = read_gguf_metadata(path)
        arch = meta.get("general.architecture", "")
        return int(meta.get(f"{arch}.context_length", default))
    except Exception:  # an unreadable header: LlamaModel reports it properly
        return default
