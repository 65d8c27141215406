"""What each sequence slot's KV holds, and the one way to cut it back: :meth:`SlotCache.truncate`.

A slot is a llama.cpp sequence (its own KV stream) plus ``tokens``, the record of which prompt
and output tokens that KV holds, position by position. The record and the KV must never
disagree: every change to one goes through this module, which changes the other to match.

Gemma 3 keeps full KV only on its global layers; the sliding-window layers (``swa_full=False``)
keep the last ``n_swa`` positions. Cutting a slot back to ``n`` tokens is therefore only exact
while the window before ``n`` is still in the cache. Further back, a **checkpoint** is needed:
a copy of the slot's sliding-window state taken while the prompt was processed
(``llama_state_seq_get_data_ext`` with the partial/SWA-only flag). Restoring one puts back the
window as it was at its position ``p``; the global layers still hold every position, so the
slot is exact again at ``p`` and only the tokens from ``p`` on are computed anew.

"Exact" means the KV kept is the KV that was computed, with nothing missing from the window. It
does not make what is computed on top of it bit-identical to computing the whole prompt cold:
llama.cpp's CPU kernels are not batch-invariant (flash attention rounds queries to f16 under 64
of a sequence's tokens in a micro-batch; K-quant matrix products take a tiled kernel from 32
tokens on, whose results depend on how the rows are grouped), so a prefix computed in another
request's chunks or one token at a time, a suffix recomputed in other chunks, or another
request's tokens in the same step move the logits; and a restored window lands in other cells
of the sliding-window ring than it had, so attention sums it in another order. On the 270M a
logit moves by 0.4-1.7, up to ~7 after a short last chunk (``bench/logit_exactness.py``):
greedy output matches a cold run when the top token leads clearly, not on a close call.
llama-server runs on the same kernels.

The same cut serves three callers: a new prompt that diverges from a slot's content (prefix
reuse), a prompt copied from another slot (:meth:`SlotCache.copy`), and draft tokens a
verification rejected.

Copying a prefix between slots takes one of two routes. With one KV stream per slot
(``kv_unified=False``) ``llama_memory_seq_cp`` queues a copy of the whole stream buffer, done at
the start of the next ``llama_decode``: exact when the donor's own window still covers the
prefix, but a checkpoint restored into the target before that decode would be overwritten by
the deferred copy. Further back, the copy goes through host memory instead
(``llama_state_seq_get_data`` / ``..._set_data``, done at once; llama.cpp saves only the
window's cells of the sliding-window layers, so this alone never reaches back) and the
donor's checkpoint is restored on top.

Checkpoints are taken at every multiple of ``checkpoint_every`` in a prompt (the scheduler ends
prompt chunks there; by default the model's sliding window, so a cut loses at most about one
window more than the window alone would) and at its end, at most
``max_checkpoints`` per slot: when one more is taken, the one whose removal leaves the smallest
gap goes, so they stay spread over the whole prompt however long it is. Each costs the
window's cells on the sliding-window layers (the planner counts them:
``memory.planner.estimate(..., checkpoints=...)``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import llama_cpp

if TYPE_CHECKING:
    from gemma_local.engine.model import LlamaModel

#: A slot's content is worth keeping (and copying from) only from this many tokens on: below it,
#: recomputing is about as cheap as a copy of a whole sequence's state.
MIN_PREFIX_COPY = 256
#: The least spacing of checkpoints: closer, each prompt chunk would be cut short for one.
MIN_CHECKPOINT_EVERY = 256
#: Only the sliding-window part of a sequence's state (llama.cpp's ``..._PARTIAL_ONLY``).
STATE_SWA_ONLY = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A slot's sliding-window state right after its first ``pos`` tokens were decoded."""

    pos: int
    data: ctypes.Array

    @property
    def nbytes(self) -> int:
        return ctypes.sizeof(self.data)


@dataclass(eq=False)
class Slot:
    """One sequence of the context: its KV, what it holds, and its checkpoints (oldest first)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    job: object | None = None  # the scheduler's Job running here, if any
    last_used: float = 0.0
    #: Its KV is a stream copy llama.cpp will make at the next decode: until then the
    #: metadata is right but the buffers are not, so its state must not be read.
    copy_pending: bool = False


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n and a[:n] == b[:n]:
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class CheckpointPolicy:
    """When checkpoints are taken and how many a slot keeps (0: none, prefix reuse stays within the window).

    ``checkpoint_every`` None: the model's sliding window (512 tokens on Gemma 3 270M, 1024 on
    the larger ones), at least :data:`MIN_CHECKPOINT_EVERY`. The spacing costs no memory (a
    slot keeps ``max_checkpoints`` however many are taken), only a copy of the window per mark.
    """

    max_checkpoints: int = 8
    checkpoint_every: int | None = None

    def every(self, n_swa: int) -> int:
        """The spacing for a model whose sliding window is ``n_swa`` tokens (0: none)."""
        return self.checkpoint_every or max(MIN_CHECKPOINT_EVERY, n_swa)


class SlotCache:
    """The slots of one context, owned by the scheduler thread (no locking: one thread only)."""

    def __init__(self, model: LlamaModel, policy: CheckpointPolicy | None = None) -> None:
        self.model = model
        self.policy = policy or CheckpointPolicy()
        self.every = self.policy.every(model.n_swa)
        if self.every <= 0:
            raise ValueError("checkpoint_every must be positive")
        self.slots = [Slot(seq_id=i) for i in range(model.params.n_seq)]
        # Without sliding-window layers (or with swa_full) every cut is exact: no checkpoints needed.
        self._windowed = model.n_swa > 0
        self.checkpoints_taken = 0
        self.checkpoints_restored = 0

    # --- reading ---------------------------------------------------------------------------

    def window_ok(self, slot: Slot, n: int) -> bool:
        """Whether the slot's KV is exact when cut back to its first ``n`` tokens, as it is now."""
        if n <= 0 or n > len(slot.tokens):
            return n == 0
        if not self._windowed:
            return True
        pos_min = llama_cpp.llama_memory_seq_pos_min(self.model.memory, slot.seq_id)
        # The token decoded next, at position n, sees positions n - n_swa + 1 on (llama.cpp
        # masks p0 when n - p0 >= n_swa): a state restored whole holds exactly those.
        return 0 <= pos_min <= max(0, n - self.model.n_swa + 1)

    def reusable(self, slot: Slot, n: int) -> int:
        """The most of the slot's first ``n`` tokens a cut keeps (the window, or a checkpoint)."""
        n = min(n, len(slot.tokens))
        if self.window_ok(slot, n):
            return n
        checkpoint = self._checkpoint_at_or_before(slot, n)
        return checkpoint.pos if checkpoint is not None else 0

    def bytes_held(self) -> int:
        return sum(c.nbytes for s in self.slots for c in s.checkpoints)

    def place(self, prompt: list[int], cut: Callable[[int], int]) -> tuple[Slot, int]:
        """Choose the free slot for ``prompt`` and make it hold the longest exact prefix of it.

        Free slots keep their last request's KV, so they are the prefix cache, and a slot is
        worth what a later request could still reuse of it. So the prompt goes to the free
        slot it costs the least content (its own earlier turns, an empty slot, then the least
        recently used), not simply to the one it matches most: a prompt that shares only an
        old part of a conversation must not overwrite the rest, which the conversation's next
        turn would extend. When another slot (free or busy) holds a longer reusable prefix,
        that prefix is copied into the chosen one.

        Args:
            prompt: the prompt's tokens.
            cut: maps a prefix length to the largest one that may be kept (the scheduler
                never keeps the last prompt token, nor half an image).

        Returns:
            The slot and how many of the prompt's tokens it already holds.
        """
        reuse = {id(s): self.reusable(s, cut(common_prefix_len(s.tokens, prompt))) for s in self.slots}
        target = self.target(prompt, reuse)
        donor = max(self.slots, key=lambda s: reuse[id(s)])
        if donor is not target and reuse[id(donor)] >= reuse[id(target)] + MIN_PREFIX_COPY:
            n = self.copy(donor, target, reuse[id(donor)])
            if n:
                return target, n
        return target, self.truncate(target, reuse[id(target)])

    def best_reuse(self, prompt: list[int], cut: Callable[[int], int]) -> int:
        """The most of ``prompt`` any slot (free or busy) could give, the way :meth:`place` counts."""
        return max(self.reusable(s, cut(common_prefix_len(s.tokens, prompt))) for s in self.slots)

    def target(self, prompt: list[int], reuse: dict[int, int] | None = None) -> Slot:
        """The free slot ``prompt`` costs the least content (see :meth:`place`).

        Args:
            prompt: the prompt's tokens.
            reuse: what each slot could give it, by ``id(slot)`` (default: nothing counted).
        """
        reuse = reuse or {}

        def lost(s: Slot) -> int:
            left = len(s.tokens) - common_prefix_len(s.tokens, prompt)
            return 0 if left < MIN_PREFIX_COPY else left

        free = [s for s in self.slots if s.job is None]
        return min(free, key=lambda s: (lost(s), -reuse.get(id(s), 0), s.last_used))

    # --- changing --------------------------------------------------------------------------

    def truncate(self, slot: Slot, n: int) -> int:
        """Cut the slot back to at most its first ``n`` tokens, keeping as many as stay exact.

        Within the sliding window the KV is just trimmed; further back the newest checkpoint
        at or before ``n`` is restored first. The record (``tokens``, checkpoints) follows.

        Returns:
            How many tokens the slot holds now (0: it was cleared).
        """
        mem = self.model.memory
        n = max(0, min(n, len(slot.tokens)))
        if n > 0 and not self.window_ok(slot, n):
            checkpoint = self._checkpoint_at_or_before(slot, n)
            n = 0
            if checkpoint is not None and self._restore(slot, checkpoint):
                n = checkpoint.pos
        if n > 0 and not llama_cpp.llama_memory_seq_rm(mem, slot.seq_id, n, -1):
            n = 0
        if n > 0 and not self.window_ok(slot, n):  # a restored window that does not fit: never guess
            n = 0
        if n == 0:
            llama_cpp.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
        del slot.tokens[n:]
        slot.checkpoints = [c for c in slot.checkpoints if c.pos <= n]
        return n

    def clear(self, slot: Slot) -> None:
        self.truncate(slot, 0)

    def copy(self, src: Slot, dst: Slot, n: int) -> int:
        """Make ``dst`` hold ``src``'s first ``n`` tokens (KV, record, checkpoints); return how many it holds.

        ``src`` is left as it was (it may be generating). Within ``src``'s window, llama.cpp's
        own stream copy is used (done at the next decode); further back, the state goes through
        host memory so that a checkpoint can be restored on top (see the module docstring).
        """
        mem = self.model.memory
        if self.window_ok(src, n):
            llama_cpp.llama_memory_seq_rm(mem, dst.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(mem, src.seq_id, dst.seq_id, -1, -1)
            dst.copy_pending = True
        elif src.copy_pending:
            return 0  # its buffers are not filled yet: nothing to read through host memory
        else:
            ctx = self.model.ctx
            size = llama_cpp.llama_state_seq_get_size(ctx, src.seq_id)
            buf = (ctypes.c_uint8 * size)()
            written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, src.seq_id)
            if not written or llama_cpp.llama_state_seq_set_data(ctx, buf, written, dst.seq_id) != written:
                self.clear(dst)
                return 0
        dst.tokens = list(src.tokens)
        dst.checkpoints = list(src.checkpoints)  # immutable snapshots: sharing them is safe
        return self.truncate(dst, n)

    def snapshot(self, slot: Slot, limit: int | None = None) -> ctypes.Array | None:
        """A host copy of the slot's whole sequence state (every position of the global layers,
        the window of the sliding-window ones), matching ``slot.tokens``; None if unreadable or
        larger than ``limit`` bytes."""
        if slot.copy_pending:
            return None
        ctx = self.model.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, slot.seq_id)
        if not size or (limit is not None and size > limit):
            return None
        buf = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, buf, size, slot.seq_id) != size:
            return None
        return buf

    def load(self, slot: Slot, tokens: list[int], state: ctypes.Array, checkpoints: list[Checkpoint], n: int) -> int:
        """Make ``slot`` hold the first ``n`` of ``tokens`` from a saved state and its checkpoints.

        The inverse of :meth:`snapshot` (the state and checkpoints come from a file, see
        :mod:`gemma_local.engine.prefix_disk`), then the usual cut back to ``n``.

        Returns:
            How many tokens the slot holds (0: llama.cpp refused the state; the slot is cleared).
        """
        self.clear(slot)
        read = llama_cpp.llama_state_seq_set_data(self.model.ctx, state, len(state), slot.seq_id)
        if read != len(state) or llama_cpp.llama_memory_seq_pos_max(self.model.memory, slot.seq_id) != len(tokens) - 1:
            self.clear(slot)
            return 0
        slot.tokens = list(tokens)
        slot.checkpoints = [c for c in checkpoints if c.pos <= len(tokens)]
        return self.truncate(slot, n)

    def decoded(self) -> None:
        """A ``llama_decode`` ran: llama.cpp has carried out every queued stream copy."""
        for slot in self.slots:
            slot.copy_pending = False

    def append(self, slot: Slot, tokens: list[int]) -> None:
        """Record tokens just decoded into the slot's sequence."""
        slot.tokens.extend(tokens)

    def next_mark(self, pos: int) -> int | None:
        """The next position after ``pos`` where a checkpoint is due; a prompt chunk ends there."""
        if not self._windowed or self.policy.max_checkpoints <= 0:
            return None
        return (pos // self.every + 1) * self.every

    def maybe_checkpoint(self, slot: Slot, *, prompt_done: bool) -> None:
        """Take a checkpoint after a prompt chunk if one is due (at each mark, and at the prompt's end)."""
        if not self._windowed or self.policy.max_checkpoints <= 0:
            return
        pos = len(slot.tokens)
        if pos <= self.model.n_swa:
            return  # the window still reaches back to position 0: any cut here is exact already
        last = slot.checkpoints[-1].pos if slot.checkpoints else 0
        if pos == last or not (prompt_done or pos % self.every == 0):
            return
        checkpoint = self._capture(slot, pos)
        if checkpoint is None:
            return
        slot.checkpoints.append(checkpoint)
        self.checkpoints_taken += 1
        while len(slot.checkpoints) > self.policy.max_checkpoints:
            self._thin(slot)

    # --- internals -------------------------------------------------------------------------

    def _checkpoint_at_or_before(self, slot: Slot, n: int) -> Checkpoint | None:
        for checkpoint in reversed(slot.checkpoints):
            if checkpoint.pos <= n:
                return checkpoint
        return None

    def _capture(self, slot: Slot, pos: int) -> Checkpoint | None:
        ctx = self.model.ctx
        size = llama_cpp.llama_state_seq_get_size_ext(ctx, slot.seq_id, STATE_SWA_ONLY)
        if not size:
            return None
        buf = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data_ext(ctx, buf, size, slot.seq_id, STATE_SWA_ONLY) != size:
            return None
        return Checkpoint(pos=pos, data=buf)

    def _restore(self, slot: Slot, checkpoint: Checkpoint) -> bool:
        data = checkpoint.data
        read = llama_cpp.llama_state_seq_set_data_ext(self.model.ctx, data, len(data), slot.seq_id, STATE_SWA_ONLY)
        if read != len(data):
            return False
        self.checkpoints_restored += 1
        return True

    @staticmethod
    def _thin(slot: Slot) -> None:
        """Drop the checkpoint whose removal leaves the smallest gap (never the newest)."""
        points = slot.checkpoints
        best, best_gap = 0, None
        for i in range(len(points) - 1):
            before = points[i - 1].pos if i > 0 else 0
            gap = points[i + 1].pos - before
            if best_gap is None or gap < best_gap:
                best, best_gap = i, gap
        del points[best]
