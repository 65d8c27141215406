"""What a GGUF file is, for ``models show`` and import checks (header parsing: ``gemma_local.gguf``).

llama.cpp would map the whole model just to answer "what is this file?"; the header reader
skips big arrays (the 262k-entry vocabulary), keeping only their length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_local.errors import ModelLoadError, StoreError
from gemma_local.gguf import ArrayInfo, read_gguf_metadata

__all__ = ["GgufInfo", "read_gguf"]

# llama.cpp's `llama_ftype` (general.file_type) → the quant name users know.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF header says about the model in it."""

    path: str
    version: int
    tensor_count: int
    metadata: dict[str, Any] = field(repr=False)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def is_projector(self) -> bool:
        """A vision projector (mmproj) rather than a language model."""
        return self.architecture == "clip" or any(k.startswith("clip.") for k in self.metadata)

    def arch_value(self, key: str) -> Any:
        """``{architecture}.{key}``, e.g. ``block_count`` → ``gemma3.block_count``."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def quant(self) -> str | None:
        file_type = self.metadata.get("general.file_type")
        return FILE_TYPES.get(file_type, f"type {file_type}") if isinstance(file_type, int) else None

    def summary(self) -> dict[str, Any]:
        """The facts ``models show`` prints: architecture, context, quant, layer and head counts."""
        vocab = self.metadata.get("tokenizer.ggml.tokens")
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "name": self.metadata.get("general.name"),
            "quantization": self.quant,
            "gguf_version": self.version,
            "tensors": self.tensor_count,
        }
        if self.is_projector:
            out.update(
                projector_type=self.metadata.get("clip.projector_type"),
                image_size=self.metadata.get("clip.vision.image_size"),
                patch_size=self.metadata.get("clip.vision.patch_size"),
                projection_dim=self.metadata.get("clip.vision.projection_dim"),
                vision_layers=self.metadata.get("clip.vision.block_count"),
            )
            return out
        out.update(
            context_length=self.arch_value("context_length"),
            layers=self.arch_value("block_count"),
            embedding_length=self.arch_value("embedding_length"),
            feed_forward_length=self.arch_value("feed_forward_length"),
            attention_heads=self.arch_value("attention.head_count"),
            kv_heads=self.arch_value("attention.head_count_kv"),
            head_dim=self.arch_value("attention.key_length"),
            sliding_window=self.arch_value("attention.sliding_window"),
            vocab_size=vocab.length if isinstance(vocab, ArrayInfo) else (len(vocab) if vocab else None),
            chat_template="tokenizer.chat_template" in self.metadata,
        )
        return out


def read_gguf(path: Path) -> GgufInfo:
    """Parse the header and metadata of a GGUF file.

    Raises:
        StoreError: not a GGUF file, or a truncated/corrupt header.
    """
    try:
        metadata = read_gguf_metadata(path)
    except ModelLoadError as e:
        raise StoreError(e.message, path=str(path)) from e
    except OSError as e:
        raise StoreError(f"Cannot read {path}: {e.strerror or e}.", path=str(path)) from e
    version = metadata.pop("GGUF.version")
    tensor_count = metadata.pop("GGUF.tensor_count")
    return GgufInfo(str(path), version, tensor_count, metadata)
