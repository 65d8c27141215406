"""Read a GGUF file's header and metadata (no tensors), for ``models show`` and import checks.

A small reader of our own: the ``gguf`` package is only a test dependency, and llama.cpp would
map the whole model just to answer "what is this file?". Big arrays (the 262k-entry vocabulary)
are skipped, keeping only their length. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gemma_local.errors import StoreError

__all__ = ["GgufInfo", "read_gguf"]

_MAGIC = b"GGUF"
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY = 16  # arrays longer than this keep only their length
_MAX_STRING = 64 * 2**20  # a corrupt length must not make us allocate gigabytes

# llama.cpp's `llama_ftype` (general.file_type) → the quant name users know.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to keep: its element type and length."""

    type: int
    length: int


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
        with path.open("rb") as f:
            if f.read(4) != _MAGIC:
                raise StoreError(f"{path} is not a GGUF file (wrong magic bytes).", path=str(path))
            (version,) = _unpack(f, "<I")
            if version < 2:
                raise StoreError(f"{path} is GGUF v{version}; only v2+ is supported.", path=str(path))
            tensor_count, kv_count = _unpack(f, "<QQ")
            metadata: dict[str, Any] = {}
            for _ in range(kv_count):
                key = _read_string(f)
                (value_type,) = _unpack(f, "<I")
                metadata[key] = _read_value(f, value_type)
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise StoreError(f"{path} has a truncated or corrupt GGUF header ({e}).", path=str(path)) from e
    except OSError as e:
        raise StoreError(f"Cannot read {path}: {e.strerror or e}.", path=str(path)) from e
    return GgufInfo(str(path), version, tensor_count, metadata)


def _unpack(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("unexpected end of file")
    return struct.unpack(fmt, data)


def _read_string(f: BinaryIO) -> str:
    (length,) = _unpack(f, "<Q")
    if length > _MAX_STRING:
        raise ValueError(f"string of {length} bytes")
    data = f.read(length)
    if len(data) != length:
        raise ValueError("unexpected end of file")
    return data.decode("utf-8")


def _read_value(f: BinaryIO, value_type: int) -> Any:
    if value_type in _SCALARS:
        return _unpack(f, _SCALARS[value_type])[0]
    if value_type == _STRING:
        return _read_string(f)
    if value_type == _ARRAY:
        item_type, length = _unpack(f, "<IQ")
        if length <= _KEEP_ARRAY:
            return [_read_value(f, item_type) for _ in range(length)]
        _skip_array(f, item_type, length)
        return ArrayInfo(item_type, length)
    raise ValueError(f"unknown metadata type {value_type}")


def _skip_array(f: BinaryIO, item_type: int, length: int) -> None:
    if item_type in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[item_type]) * length, 1)
        return
    if item_type == _STRING:
        for _ in range(length):
            (n,) = _unpack(f, "<Q")
            f.seek(n, 1)
        return
    for _ in range(length):  # arrays of arrays: rare, walk them
        _read_value(f, item_type)
