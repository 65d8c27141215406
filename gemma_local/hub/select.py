"""Pick the GGUF files of one quantization (and its vision projector) out of a repo's file list.

Pure functions over file names, so the rules are tested without a network:

- a quant tag matches as a whole token: ``q6_k`` matches ``…-Q6_K.gguf`` but not ``…-UD-Q6_K_XL.gguf``;
- a split GGUF (``…-00001-of-00003.gguf``) is one model: every part, in order;
- ``mmproj*.gguf`` files are projectors, never models; F16 is preferred (what llama.cpp ships).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ModelFiles",
    "describe",
    "find_mmproj",
    "group_models",
    "is_mmproj",
    "select_by_tag",
    "select_default",
    "select_file",
]

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# llama.cpp's own default when a repo holds several quants and none is named (`-hf repo`).
_DEFAULT_TAGS = ("q4_k_m", "q4_0")
_MMPROJ_PREFERENCE = ("f16", "bf16", "f32")


@dataclass(frozen=True)
class ModelFiles:
    """One loadable model: a single GGUF, or all parts of a split one (first part first)."""

    files: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.files[0]


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def is_mmproj(path: str) -> bool:
    """Whether a repo file is a vision projector (llama.cpp's ``mmproj`` naming)."""
    return _basename(path).lower().startswith("mmproj")


def _is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def group_models(paths: Iterable[str]) -> list[ModelFiles]:
    """Every model in a repo: single GGUFs and complete split sets (incomplete sets are dropped)."""
    singles: list[ModelFiles] = []
    splits: dict[tuple[str, int], dict[int, str]] = {}
    for path in sorted(paths):
        if not _is_gguf(path) or is_mmproj(path):
            continue
        match = _SPLIT.match(path)
        if match is None:
            singles.append(ModelFiles((path,)))
            continue
        key = (match["stem"], int(match["count"]))
        splits.setdefault(key, {})[int(match["index"])] = path
    for (_, count), parts in splits.items():
        if sorted(parts) == list(range(1, count + 1)):
            singles.append(ModelFiles(tuple(parts[i] for i in range(1, count + 1))))
    return sorted(singles, key=lambda m: m.first)


def _has_tag(path: str, tag: str) -> bool:
    # Whole-token match: the tag must not continue with a letter, digit or underscore (Q6_K vs Q6_K_XL).
    pattern = rf"(?<![a-z0-9]){re.escape(tag.lower())}(?![a-z0-9_])"
    return re.search(pattern, _basename(path).lower()) is not None


def select_by_tag(paths: Iterable[str], tag: str) -> list[ModelFiles]:
    """Models whose (first) file name carries ``tag`` as a whole token."""
    return [m for m in group_models(paths) if _has_tag(m.first, tag)]


def select_file(paths: Iterable[str], filename: str) -> ModelFiles | None:
    """The model an exact file name belongs to (any part of a split set selects the whole set)."""
    wanted = filename.lower()
    for model in group_models(paths):
        if any(p.lower() == wanted or _basename(p).lower() == wanted for p in model.files):
            return model
    return None


def select_default(paths: Iterable[str]) -> ModelFiles | None:
    """The model to take when none is named: the only one, else Q4_K_M, else Q4_0."""
    models = group_models(paths)
    if len(models) == 1:
        return models[0]
    for tag in _DEFAULT_TAGS:
        found = [m for m in models if _has_tag(m.first, tag)]
        if len(found) == 1:
            return found[0]
    return None


def find_mmproj(paths: Iterable[str], near: str | None = None) -> str | None:
    """The repo's vision projector, preferring F16, and the one in the model's own folder."""
    folder = near.rsplit("/", 1)[0] if near and "/" in near else ""
    candidates = [p for p in sorted(paths) if _is_gguf(p) and is_mmproj(p)]
    if folder:
        same_folder = [p for p in candidates if p.rsplit("/", 1)[0] == folder]
        candidates = same_folder or candidates
    for precision in _MMPROJ_PREFERENCE:
        for path in candidates:
            if _has_tag(path, precision):
                return path
    return candidates[0] if candidates else None


def describe(paths: Iterable[str]) -> str:
    """A short list of a repo's models, for error messages."""
    names = [_basename(m.first) for m in group_models(paths)]
    return ", ".join(names[:12]) + (" …" if len(names) > 12 else "") if names else "no GGUF files"
