"""Build a tiny random-weight Gemma 3 vision projector (mmproj GGUF) for tests.

Real Gemma 3 projectors are ~850 MB and take ~0.8 s per image on a CPU. This one is a few
hundred KB and encodes an image in milliseconds, yet llama.cpp's real ``mtmd`` code loads it
and runs the real image path (preprocessing, SigLIP tower, pooling, projection, soft-token
embeddings) with the real Gemma 3 270M text model. Its outputs are meaningless: tests may
check shapes, token counts and that generation runs, never what the model "sees".

Recipe (verified against llama.cpp's clip loader, see docs/gemma3.md "Testing vision without
real weights"):

* Metadata: ``general.architecture = "clip"``, ``clip.has_vision_encoder = true``,
  ``clip.projector_type = "gemma3"``, ``clip.vision.projection_dim`` = the text model's
  hidden size (640 for 270M; a mismatch makes mtmd refuse the file), ``image_size``,
  ``patch_size``, ``embedding_length`` (E), ``feed_forward_length`` (F), ``block_count``,
  ``attention.head_count``, ``attention.layer_norm_epsilon``, ``image_mean`` / ``image_std``
  (3 floats each), ``clip.use_gelu`` and ``clip.vision.projector.scale_factor``.
* Tokens per image = (image_size / patch_size / scale_factor)². The defaults (64 / 4 / 1)
  give a 16×16 patch grid and 256 tokens, the same count as a real Gemma 3 image.
* Tensors (shapes in ggml order; numpy's are reversed): ``v.patch_embd.weight`` [p,p,3,E]
  (+ bias [E]), ``v.position_embd.weight`` [E, n_patches], per block ``ln1``/``ln2``
  (weight, bias [E]), ``attn_{q,k,v,out}`` ([E,E] + [E]), ``ffn_up`` [E,F] + [F],
  ``ffn_down`` [F,E] + [E]; then ``v.post_ln`` [E], ``mm.input_projection.weight`` [T,E] and
  ``mm.soft_emb_norm.weight`` [E] (ones).
* Keep F ≠ E: llama.cpp guesses from the shapes whether up/down are stored swapped.
* Random normal weights with std 0.02 (layer norms at 1, biases at 0) keep the embeddings
  finite through the tower and the text model.
* Missing ``v.patch_embd.weight`` or ``attn_q`` crashes llama.cpp (segfault), which is why
  :func:`gemma_local.engine.projector.validate_mmproj` checks files before mtmd sees them.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_tiny_gemma3_mmproj(
    path: str | Path,
    *,
    text_hidden: int = 640,
    image_size: int = 64,
    patch_size: int = 4,
    scale_factor: int = 1,
    hidden: int = 32,
    ffn: int = 64,
    n_blocks: int = 2,
    n_heads: int = 2,
    seed: int = 0,
    omit: frozenset[str] = frozenset(),
    projector_type: str = "gemma3",
    has_vision_encoder: bool = True,
) -> Path:
    """Write a tiny random-weight Gemma 3 mmproj GGUF.

    Args:
        path: Where to write the file.
        text_hidden: The text model's hidden size (``n_embd``); 640 for Gemma 3 270M.
        image_size: Side of the square image the tower sees (mtmd resizes inputs to this).
        patch_size: Side of one patch; ``image_size`` must be a multiple of it.
        scale_factor: Average-pooling kernel over the patch grid (llama.cpp's default is 4).
        hidden: Vision hidden size E.
        ffn: Vision FFN size F (must differ from ``hidden``).
        n_blocks: Vision transformer blocks.
        n_heads: Attention heads (must divide ``hidden``).
        seed: Random seed, so the file's bytes are reproducible.
        omit: Tensor names to leave out (to build broken files for validation tests).
        projector_type: ``clip.projector_type`` (tests of the validator change it).
        has_vision_encoder: ``clip.has_vision_encoder`` (likewise).

    Returns:
        The path written.
    """
    if image_size % (patch_size * scale_factor):
        raise ValueError("image_size must be a multiple of patch_size × scale_factor")
    if ffn == hidden or hidden % n_heads:
        raise ValueError("need ffn != hidden and hidden divisible by n_heads")
    path = Path(path)
    rng = np.random.default_rng(seed)
    n_patches = (image_size // patch_size) ** 2

    def normal(*numpy_shape: int) -> np.ndarray:
        return (rng.standard_normal(numpy_shape) * 0.02).astype(np.float32)

    tensors: dict[str, np.ndarray] = {
        # numpy shapes are the reverse of the ggml shapes in the module docstring
        "v.patch_embd.weight": normal(hidden, 3, patch_size, patch_size),
        "v.patch_embd.bias": np.zeros(hidden, np.float32),
        "v.position_embd.weight": normal(n_patches, hidden),
    }
    for i in range(n_blocks):
        b = f"v.blk.{i}"
        for norm in ("ln1", "ln2"):
            tensors[f"{b}.{norm}.weight"] = np.ones(hidden, np.float32)
            tensors[f"{b}.{norm}.bias"] = np.zeros(hidden, np.float32)
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{b}.{proj}.weight"] = normal(hidden, hidden)
            tensors[f"{b}.{proj}.bias"] = np.zeros(hidden, np.float32)
        tensors[f"{b}.ffn_up.weight"] = normal(ffn, hidden)
        tensors[f"{b}.ffn_up.bias"] = np.zeros(ffn, np.float32)
        tensors[f"{b}.ffn_down.weight"] = normal(hidden, ffn)
        tensors[f"{b}.ffn_down.bias"] = np.zeros(hidden, np.float32)
    tensors["v.post_ln.weight"] = np.ones(hidden, np.float32)
    tensors["v.post_ln.bias"] = np.zeros(hidden, np.float32)
    tensors["mm.input_projection.weight"] = normal(hidden, text_hidden)
    tensors["mm.soft_emb_norm.weight"] = np.ones(hidden, np.float32)

    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("tiny-gemma3-mmproj (random weights, tests only)")
    writer.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, has_vision_encoder)
    writer.add_clip_projector_type(projector_type)
    writer.add_vision_projection_dim(text_hidden)
    writer.add_vision_image_size(image_size)
    writer.add_vision_patch_size(patch_size)
    writer.add_vision_embedding_length(hidden)
    writer.add_vision_feed_forward_length(ffn)
    writer.add_vision_block_count(n_blocks)
    writer.add_vision_head_count(n_heads)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)
    writer.add_vision_projector_scale_factor(scale_factor)
    for name, array in tensors.items():
        if name not in omit:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
