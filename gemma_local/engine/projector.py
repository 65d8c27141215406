"""Check a Gemma 3 vision projector (mmproj GGUF) before llama.cpp's mtmd is given it.

llama.cpp fails cleanly on some broken projectors, but on others it kills the whole process:
a missing ``v.patch_embd.weight`` or ``v.blk.N.attn_{q,k,v}.weight``, or a projector of another
type (e.g. ``mlp``) paired with Gemma 3, is a segmentation fault (verified with llama-cpp-python
0.3.36). Reading the GGUF header costs milliseconds, so every projector is checked here first
and refused with a :class:`~gemma_local.errors.ModelLoadError` that says what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gemma_local.errors import ModelLoadError
from gemma_local.gguf import TensorInfo, read_gguf_tensors

# Hidden sizes of the Gemma 3 family, to name the model a mismatched projector belongs to.
_GEMMA3_BY_HIDDEN = {640: "270M", 1152: "1B", 2560: "4B", 3840: "12B", 5376: "27B"}


def validate_mmproj(path: str | Path, n_embd: int) -> dict[str, Any]:
    """Refuse a projector file that does not fit a Gemma 3 text model of hidden size ``n_embd``.

    Checks: a readable GGUF; ``clip.has_vision_encoder``; projector type ``gemma3``;
    ``clip.vision.projection_dim`` equal to ``n_embd``; the tensors llama.cpp needs (patch
    embedding, every block's attention and FFN weights, the input projection and soft-embedding
    norm) present, with shapes that agree with the metadata.

    Args:
        path: The mmproj GGUF file.
        n_embd: The text model's hidden size (``llama_model_n_embd``).

    Returns:
        The projector's metadata, for logging (``clip.vision.image_size`` etc.).

    Raises:
        ModelLoadError: the file is missing, not a GGUF, or not a usable Gemma 3 projector.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Vision projector not found: {path}", path=str(path))
    meta, tensor_list = read_gguf_tensors(path)
    tensors = {t.name: t for t in tensor_list}

    def fail(what: str) -> ModelLoadError:
        return ModelLoadError(
            f"{path} is not a usable Gemma 3 vision projector: {what}. Use the mmproj file published "
            "with this model (e.g. mmproj-model-f16.gguf from the same repository).",
            path=str(path),
        )

    if meta.get("clip.has_vision_encoder") is not True:
        raise fail("it has no vision encoder (clip.has_vision_encoder is not true)")
    projector_type = meta.get("clip.vision.projector_type", meta.get("clip.projector_type"))
    if projector_type != "gemma3":
        raise fail(f"its projector type is {projector_type!r}, not 'gemma3'")
    projection_dim = meta.get("clip.vision.projection_dim")
    if not isinstance(projection_dim, int):
        raise fail("clip.vision.projection_dim is missing")
    if projection_dim != n_embd:
        owner = _GEMMA3_BY_HIDDEN.get(projection_dim)
        belongs = f" (it belongs to Gemma 3 {owner})" if owner else ""
        this = _GEMMA3_BY_HIDDEN.get(n_embd)
        raise fail(
            f"it projects to hidden size {projection_dim}{belongs}, but the text model's hidden size is "
            f"{n_embd}" + (f" (Gemma 3 {this})" if this else "")
        )
    sizes = {}
    for key in ("image_size", "patch_size", "embedding_length", "feed_forward_length", "block_count"):
        value = meta.get(f"clip.vision.{key}")
        if not isinstance(value, int) or value <= 0:
            raise fail(f"clip.vision.{key} is missing or not a positive integer ({value!r})")
        sizes[key] = value
    heads = meta.get("clip.vision.attention.head_count")
    if not isinstance(heads, int) or heads <= 0 or sizes["embedding_length"] % heads:
        raise fail(f"clip.vision.attention.head_count ({heads!r}) does not divide the hidden size")
    if sizes["image_size"] % sizes["patch_size"]:
        raise fail(f"image_size {sizes['image_size']} is not a multiple of patch_size {sizes['patch_size']}")

    hidden, patch = sizes["embedding_length"], sizes["patch_size"]
    _expect(tensors, "v.patch_embd.weight", (patch, patch, 3, hidden), fail)
    for i in range(sizes["block_count"]):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            _expect(tensors, f"v.blk.{i}.{name}.weight", (hidden, hidden), fail)
        for name in ("ffn_up", "ffn_down"):
            _expect(tensors, f"v.blk.{i}.{name}.weight", None, fail)
    _expect(tensors, "mm.input_projection.weight", (n_embd, hidden), fail)
    _expect(tensors, "mm.soft_emb_norm.weight", None, fail)
    return meta


def _expect(tensors: dict[str, TensorInfo], name: str, shape: tuple[int, ...] | None, fail) -> None:
    """``name`` must exist and, when ``shape`` is given, have that ggml shape."""
    info = tensors.get(name)
    if info is None:
        raise fail(f"tensor {name} is missing")
    if shape is not None and info.shape != shape:
        raise fail(f"tensor {name} has shape {list(info.shape)}, expected {list(shape)}")
