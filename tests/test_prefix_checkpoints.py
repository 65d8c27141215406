"""Sliding-window checkpoints and slot choice on the real engine (270M: a 512-token window).

The session engine has 4 slots of 2048 tokens and the default checkpoint policy (one every
sliding window, 512 prompt tokens here, from the first mark past the window, and one at each
prompt's end).
"""

from __future__ import annotations

import ctypes
import hashlib
import io

from PIL import Image

from gemma_local.engine import ChatMessage, GenerationRequest, ImagePart, SamplingParams, TextPart
from gemma_local.engine.kv_slots import Checkpoint, Slot, SlotCache, common_prefix_len
from gemma_local.memory import ModelShape, estimate

GREEDY = SamplingParams(temperature=0.0)
NOTES = [f"Note {i}: the value of item {i} is {i * 7 % 13} units." for i in range(95)]


def picture() -> ImagePart:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 160, 90)).save(buf, "PNG")
    data = buf.getvalue()
    return ImagePart(data=data, digest=hashlib.sha256(data).hexdigest())


def conversation(notes: list[str], *turns: ChatMessage) -> GenerationRequest:
    system = ChatMessage("user", (picture(), TextPart(" ".join(notes))))
    return GenerationRequest(
        messages=(system, ChatMessage.text("assistant", "Noted."), *turns, ChatMessage.text("user", "Item 5?")),
        sampling=GREEDY,
        max_tokens=8,
        logprobs=0,
    )


def tokens(result) -> list[str]:
    return [lp.token for lp in result.logprobs]


def test_an_edit_beyond_the_window_reuses_a_checkpoint_and_keeps_the_conversation(engine) -> None:
    engine.clear_prefix_cache()
    original = conversation(NOTES)
    edited_notes = list(NOTES)
    edited_notes[52] = "Note 52: (removed)."
    edited = conversation(edited_notes)
    a, b = engine.prompt_tokens(original), engine.prompt_tokens(edited)
    diverge = common_prefix_len(a, b)
    assert len(a) - diverge > 512 + 8  # out of the sliding window's reach
    assert diverge > 1024  # past the first checkpoint

    first = engine.generate(original)
    # What the planner counts per checkpoint is what llama.cpp saved (the window's cells).
    shape = ModelShape.from_gguf(engine.model.path)
    saved = [c.nbytes for s in engine._scheduler.slots for c in s.checkpoints]
    assert saved and all(abs(n - estimate(shape, ctx=2048).checkpoint_bytes) < 64 * 1024 for n in saved)

    warm = engine.generate(edited)
    # Everything up to the last checkpoint before the edit (one every 512 tokens from 1024 on)
    # came from the cache (copied from the original's slot into a free one), not the whole prompt.
    assert max(1024, diverge - 512) <= warm.usage.cached_tokens <= diverge

    # The original conversation was not overwritten: its next turn reuses all of it.
    follow_up = conversation(NOTES, ChatMessage.text("assistant", first.text), ChatMessage.text("user", "Thanks."))
    shared = common_prefix_len(a, engine.prompt_tokens(follow_up))
    assert shared > diverge + 512
    assert engine.generate(follow_up).usage.cached_tokens == shared

    engine.clear_prefix_cache()
    cold = engine.generate(edited)
    assert cold.usage.cached_tokens == 0
    assert tokens(warm) == tokens(cold)


def _checkpoint(pos: int) -> Checkpoint:
    return Checkpoint(pos=pos, data=(ctypes.c_uint8 * 1)())


def test_thinning_keeps_checkpoints_spread_and_the_newest() -> None:
    slot = Slot(seq_id=0, checkpoints=[_checkpoint(p) for p in (1024, 2048, 2100, 3072, 4096)])
    SlotCache._thin(slot)
    # Dropping 2100 leaves the smallest gap (2048 → 3072): the rest stay evenly spread.
    assert [c.pos for c in slot.checkpoints] == [1024, 2048, 3072, 4096]
    for _ in range(3):
        SlotCache._thin(slot)
    assert [c.pos for c in slot.checkpoints] == [4096]
