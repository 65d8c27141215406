"""The tiny random-weight projector runs through llama.cpp's real mtmd with the real 270M model.

How the projector is built (metadata, tensor shapes, why F ≠ E, why std 0.02) is documented in
``tests/tiny_mmproj.py``; the ``tiny_mmproj`` session fixture in ``conftest.py`` writes it.
The outputs are random: these tests check structure (chunks, token counts, shapes, finite
numbers), never meaning.

The mtmd call sequence exercised here is the one the engine uses:
``mtmd_context_params_default`` → ``mtmd_init_from_file(path, llama_model, params)`` →
``mtmd_support_vision`` → ``mtmd_bitmap_init(nx, ny, rgb_bytes)`` → ``mtmd_input_chunks_init``
→ ``mtmd_tokenize(ctx, chunks, text_with_marker, bitmaps, 1)`` → per chunk
``mtmd_input_chunk_get_type`` / ``_get_n_tokens`` / ``_get_tokens_text`` → ``mtmd_encode_chunk``
→ ``mtmd_get_output_embd`` (n_tokens × n_embd floats) → decode into the text model with
non-causal attention.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from llama_cpp import mtmd_cpp
from tiny_mmproj import write_tiny_gemma3_mmproj

from gemma_local.engine.model import ContextParams, LlamaModel
from gemma_local.engine.projector import validate_mmproj
from gemma_local.errors import ModelLoadError
from gemma_local.gguf import read_gguf_metadata, read_gguf_tensors

N_EMBD_270M = 640
TOKENS_PER_IMAGE = 256  # (64 / 4 / 1)²


@pytest.fixture(scope="module")
def text_model(model_path: Path):
    # n_ubatch must be ≥ the image's 256 tokens: image chunks are decoded non-causally in one ubatch.
    model = LlamaModel(model_path, ContextParams(n_ctx_per_seq=1024, n_seq=1, n_ubatch=512, n_threads=1))
    yield model
    model.close()


@pytest.fixture(scope="module")
def mtmd_ctx(text_model: LlamaModel, tiny_mmproj: Path):
    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 1
    params.print_timings = False
    params.warmup = False
    ctx = mtmd_cpp.mtmd_init_from_file(str(tiny_mmproj).encode(), text_model.model, params)
    assert ctx, "mtmd_init_from_file returned NULL for the tiny projector"
    yield ctx
    mtmd_cpp.mtmd_free(ctx)


def _bitmap(width: int, height: int, seed: int = 0):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    data = (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)
    bitmap = mtmd_cpp.mtmd_bitmap_init(width, height, data)
    assert bitmap
    return bitmap


def _text_tokens(chunk) -> list[int]:
    n = ctypes.c_size_t(0)
    ptr = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
    return [ptr[i] for i in range(n.value)]


def test_generator_writes_the_documented_recipe(tiny_mmproj: Path) -> None:
    meta, tensors = read_gguf_tensors(tiny_mmproj)
    assert meta["general.architecture"] == "clip"
    assert meta["clip.has_vision_encoder"] is True
    assert meta["clip.projector_type"] == "gemma3"
    assert meta["clip.vision.projection_dim"] == N_EMBD_270M
    assert (meta["clip.vision.image_size"], meta["clip.vision.patch_size"]) == (64, 4)
    assert meta["clip.vision.projector.scale_factor"] == 1
    shapes = {t.name: t.shape for t in tensors}
    assert shapes["v.patch_embd.weight"] == (4, 4, 3, 32)
    assert shapes["v.blk.1.attn_q.weight"] == (32, 32)
    assert shapes["v.blk.0.ffn_up.weight"] == (32, 64)
    assert shapes["v.blk.0.ffn_down.weight"] == (64, 32)
    assert shapes["mm.input_projection.weight"] == (N_EMBD_270M, 32)
    # The metadata-only reader still reads the same header (the tensor reader adds where data starts).
    assert read_gguf_metadata(tiny_mmproj) == {k: v for k, v in meta.items() if k != "GGUF.data_start"}
    assert validate_mmproj(tiny_mmproj, N_EMBD_270M)["clip.vision.block_count"] == 2


def test_mtmd_tokenizes_encodes_and_decodes_one_image(mtmd_ctx, text_model: LlamaModel) -> None:
    assert mtmd_cpp.mtmd_support_vision(mtmd_ctx)
    marker = mtmd_cpp.mtmd_default_marker().decode()
    prompt = f"<start_of_turn>user\nWhat is this? {marker}<end_of_turn>\n<start_of_turn>model\n".encode()
    text = mtmd_cpp.mtmd_input_text(text=prompt, text_len=len(prompt), add_special=True, parse_special=True)
    bitmap = _bitmap(40, 30)  # any size: mtmd resizes to the projector's 64×64
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    try:
        bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd_cpp.mtmd_tokenize(mtmd_ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
        kinds = []
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            kinds.append((mtmd_cpp.mtmd_input_chunk_get_type(chunk), mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)))
        text_kind, image_kind = mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT, mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE
        assert [k for k, _ in kinds] == [text_kind, image_kind, text_kind]
        assert kinds[1][1] == TOKENS_PER_IMAGE

        before = _text_tokens(mtmd_cpp.mtmd_input_chunks_get(chunks, 0))
        after = _text_tokens(mtmd_cpp.mtmd_input_chunks_get(chunks, 2))
        special = text_model._special_ids
        # mtmd adds BOS (add_special) and wraps the image in <start_of_image> … <end_of_image> itself.
        assert before[0] == text_model.bos and before.count(text_model.bos) == 1
        assert before[-1] == special["<start_of_image>"]
        assert after[0] == special["<end_of_image>"]
        assert special["<start_of_turn>"] in before and special["<end_of_turn>"] in after

        image_chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, 1)
        image_tokens = mtmd_cpp.mtmd_input_chunk_get_tokens_image(image_chunk)
        assert mtmd_cpp.mtmd_image_tokens_get_n_tokens(image_tokens) == TOKENS_PER_IMAGE
        assert mtmd_cpp.mtmd_decode_use_non_causal(mtmd_ctx, image_chunk)
        assert mtmd_cpp.mtmd_encode_chunk(mtmd_ctx, image_chunk) == 0
        out = mtmd_cpp.mtmd_get_output_embd(mtmd_ctx)
        embd = np.ctypeslib.as_array(out, shape=(TOKENS_PER_IMAGE, text_model.n_embd)).copy()
        assert embd.shape == (256, 640)
        assert np.isfinite(embd).all() and embd.std() > 0

        logits = _decode(text_model, before, embd, after)
        assert logits.shape == (text_model.n_vocab,) and np.isfinite(logits).all()
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)


def test_same_pixels_give_the_same_embeddings(mtmd_ctx) -> None:
    def encode(seed: int) -> np.ndarray:
        bitmap = _bitmap(64, 64, seed)
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            marker = mtmd_cpp.mtmd_default_marker()
            text = mtmd_cpp.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            assert mtmd_cpp.mtmd_tokenize(mtmd_ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
            image_chunk = next(
                c
                for c in (
                    mtmd_cpp.mtmd_input_chunks_get(chunks, i) for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks))
                )
                if mtmd_cpp.mtmd_input_chunk_get_type(c) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE
            )
            assert mtmd_cpp.mtmd_encode_chunk(mtmd_ctx, image_chunk) == 0
            out = mtmd_cpp.mtmd_get_output_embd(mtmd_ctx)
            return np.ctypeslib.as_array(out, shape=(TOKENS_PER_IMAGE * N_EMBD_270M,)).copy()
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            mtmd_cpp.mtmd_bitmap_free(bitmap)

    first, again, other = encode(1), encode(1), encode(2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def _decode(model: LlamaModel, before: list[int], embd: np.ndarray, after: list[int]) -> np.ndarray:
    """Decode text, image embeddings (non-causal, one batch) and text into sequence 0; last logits."""
    llama_cpp.llama_memory_clear(model.memory, True)
    pos = 0

    def decode_tokens(tokens: list[int], *, logits_last: bool) -> None:
        nonlocal pos
        batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = logits_last and i == len(tokens) - 1
            batch.n_tokens = len(tokens)
            assert llama_cpp.llama_decode(model.ctx, batch) == 0
        finally:
            llama_cpp.llama_batch_free(batch)
        pos += len(tokens)

    decode_tokens(before, logits_last=False)
    n_tokens, n_embd = embd.shape
    batch = llama_cpp.llama_batch_init(n_tokens, n_embd, 1)
    try:
        ctypes.memmove(batch.embd, np.ascontiguousarray(embd, dtype=np.float32).ctypes.data, embd.nbytes)
        for i in range(n_tokens):
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = False
        batch.n_tokens = n_tokens
        llama_cpp.llama_set_causal_attn(model.ctx, False)
        try:
            assert llama_cpp.llama_decode(model.ctx, batch) == 0
        finally:
            llama_cpp.llama_set_causal_attn(model.ctx, True)
    finally:
        llama_cpp.llama_batch_free(batch)
    pos += n_tokens
    decode_tokens(after, logits_last=True)
    ptr = llama_cpp.llama_get_logits_ith(model.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(model.n_vocab,)).copy()


# --- validate_mmproj: files that would crash or confuse llama.cpp are refused up front ----------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # These four segfault inside mtmd_init_from_file (verified with llama-cpp-python 0.3.36).
        ({"omit": frozenset({"v.patch_embd.weight"})}, "tensor v.patch_embd.weight is missing"),
        ({"omit": frozenset({"v.blk.0.attn_q.weight"})}, "tensor v.blk.0.attn_q.weight is missing"),
        ({"omit": frozenset({"v.blk.1.attn_k.weight"})}, "tensor v.blk.1.attn_k.weight is missing"),
        ({"projector_type": "mlp"}, "projector type is 'mlp', not 'gemma3'"),
        # These fail cleanly in llama.cpp, but with a less helpful message.
        ({"text_hidden": 2560}, "projects to hidden size 2560 (it belongs to Gemma 3 4B)"),
        ({"omit": frozenset({"mm.input_projection.weight"})}, "tensor mm.input_projection.weight is missing"),
        ({"has_vision_encoder": False}, "no vision encoder"),
    ],
)
def test_validate_mmproj_refuses(tmp_path: Path, kwargs: dict, message: str) -> None:
    path = write_tiny_gemma3_mmproj(tmp_path / "broken.gguf", **kwargs)
    with pytest.raises(ModelLoadError) as info:
        validate_mmproj(path, N_EMBD_270M)
    assert message in str(info.value)
    assert info.value.path == str(path)


def test_validate_mmproj_refuses_non_gguf_truncated_and_missing(tmp_path: Path, tiny_mmproj: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PNG\x00" * 16)
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        validate_mmproj(not_gguf, N_EMBD_270M)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_mmproj.read_bytes()[:600])
    with pytest.raises(ModelLoadError, match="truncated"):
        validate_mmproj(truncated, N_EMBD_270M)
    with pytest.raises(ModelLoadError, match="not found"):
        validate_mmproj(tmp_path / "absent.gguf", N_EMBD_270M)


def test_validate_mmproj_names_the_mismatched_text_model(tiny_mmproj: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"hidden size is 5376 \(Gemma 3 27B\)"):
        validate_mmproj(tiny_mmproj, 5376)
