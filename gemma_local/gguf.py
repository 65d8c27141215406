"""Read a GGUF file's header without loading the model (fast, no llama.cpp).

The one GGUF header reader, at the bottom of the package so every layer can use it: the memory
planner (layer counts, heads, sliding window, context length), the model store (``models
show``, ``import``) and the vision projector check (``read_gguf_tensors``). Large arrays (the
262k-entry vocabulary) are skipped and reported by length only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gemma_local.errors import ModelLoadError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY_MAX = 64  # arrays longer than this are skipped (their length is kept)


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f = f
        self.path = path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelLoadError(f"{self.path} is truncated: its GGUF header ends early.", path=str(self.path))
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 26:
            raise ModelLoadError(f"{self.path} has a corrupt GGUF header (string of {n} bytes).", path=str(self.path))
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("<I")
            n = self.unpack("<Q")
            if n <= _KEEP_ARRAY_MAX:
                return [self.value(item_type) for _ in range(n)]
            self.skip(item_type, n)
            return ArrayInfo(item_type, n)
        raise ModelLoadError(f"{self.path} has a corrupt GGUF header (value type {vtype}).", path=str(self.path))

    def skip(self, item_type: int, n: int) -> None:
        if item_type in _SCALARS:
            self.f.seek(struct.calcsize(_SCALARS[item_type]) * n, 1)
        elif item_type == _STRING:
            for _ in range(n):
                self.f.seek(self.unpack("<Q"), 1)
        else:
            for _ in range(n):
                self.value(item_type)


class ArrayInfo:
    """A long array left unread: its element type and length."""

    def __init__(self, item_type: int, length: int) -> None:
        self.item_type = item_type
        self.length = length

    def __repr__(self) -> str:
        return f"<array of {self.length}>"


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (long arrays as :class:`ArrayInfo`).

    Raises:
        ModelLoadError: not a GGUF file, or a truncated/corrupt header.
    """
    return _read_header(Path(path), with_tensors=False)[0]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a GGUF header (its data is not read)."""

    name: str
    #: Dimensions in ggml order (``ne[0]`` first: the reverse of numpy's shape).
    shape: tuple[int, ...]
    #: The ggml type id (0 = F32, 1 = F16, …).
    ggml_type: int
    #: Where its data starts, from the start of the data section.
    offset: int = 0


def read_gguf_tensors(path: str | Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """The metadata (as :func:`read_gguf_metadata`) and the tensor list of a GGUF file.

    Args:
        path: The GGUF file.

    Returns:
        ``(metadata, tensors)``, tensors in file order.

    Raises:
        ModelLoadError: not a GGUF file, or a truncated/corrupt header.
    """
    return _read_header(Path(path), with_tensors=True)


def tensor_sizes(path: str | Path) -> dict[str, int]:
    """Bytes of each tensor's data in a GGUF file (from the offsets: no table of type sizes).

    Raises:
        ModelLoadError: not a GGUF file, or a truncated/corrupt header.
    """
    path = Path(path)
    meta, tensors = read_gguf_tensors(path)
    ordered = sorted(tensors, key=lambda t: t.offset)
    end = path.stat().st_size - int(meta["GGUF.data_start"])
    ends = [t.offset for t in ordered[1:]] + [end]
    return {t.name: max(0, stop - t.offset) for t, stop in zip(ordered, ends, strict=True)}


_MAX_DIMS = 8  # GGML_MAX_DIMS is 4; anything far above it is a corrupt header


def _read_header(path: Path, *, with_tensors: bool) -> tuple[dict[str, Any], list[TensorInfo]]:
    with path.open("rb") as f:
        r = _Reader(f, path)
        if r.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF model file.", path=str(path))
        version = r.unpack("<I")
        if version < 2:
            raise ModelLoadError(f"{path} uses GGUF version {version}, which is too old.", path=str(path))
        n_tensors = r.unpack("<Q")
        n_kv = r.unpack("<Q")
        meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.unpack("<I"))
        tensors: list[TensorInfo] = []
        if with_tensors:
            for _ in range(n_tensors):
                name = r.string()
                n_dims = r.unpack("<I")
                if n_dims > _MAX_DIMS:
                    raise ModelLoadError(
                        f"{path} has a corrupt GGUF header (tensor {name!r} with {n_dims} dimensions).",
                        path=str(path),
                    )
                shape = tuple(r.unpack("<Q") for _ in range(n_dims))
                ggml_type = r.unpack("<I")
                tensors.append(TensorInfo(name, shape, ggml_type, r.unpack("<Q")))
            alignment = int(meta.get("general.alignment", 32) or 32)
            meta["GGUF.data_start"] = -(-f.tell() // alignment) * alignment
    return meta, tensors
