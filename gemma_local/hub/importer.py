"""``models import PATH``: register a GGUF already on disk (hashed, checked to be a GGUF)."""

from __future__ import annotations

import re
from pathlib import Path

from gemma_local.errors import ModelNotFoundError, StoreError
from gemma_local.hub.gguf_meta import read_gguf
from gemma_local.hub.progress import NullProgress, Progress
from gemma_local.hub.store import ModelStore, StoredFile, StoreEntry, copy_into
from gemma_local.hub.verify import sha256_file

__all__ = ["default_name", "import_model"]

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def default_name(path: Path) -> str:
    """``gemma-3-4b-it-Q4_K_M.gguf`` → ``gemma-3-4b-it-q4_k_m`` (split suffixes dropped)."""
    match = _SPLIT.match(path.name)
    stem = match["stem"] if match else path.stem
    return stem.lower()


def _parts(path: Path) -> list[Path]:
    match = _SPLIT.match(path.name)
    if match is None:
        return [path]
    count = int(match["count"])
    parts = [path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelNotFoundError(f"{path.name} is part of a split GGUF, but {', '.join(missing)} is missing.")
    return parts


def import_model(
    path: Path,
    *,
    mmproj: Path | None = None,
    name: str | None = None,
    copy: bool = False,
    store: ModelStore | None = None,
    progress: Progress | None = None,
) -> StoreEntry:
    """Hash and register a local GGUF (and its vision projector) under ``name``.

    Args:
        path: the model GGUF (the first part of a split model brings the other parts).
        mmproj: its vision projector, checked to be one.
        name: store name; default the file name, lower-cased, without ``.gguf``.
        copy: copy the files into the store (``rm`` then deletes them); default register in place.
        store: default ``ModelStore()``.
        progress: hashing progress.

    Raises:
        ModelNotFoundError: a file does not exist.
        StoreError: not a GGUF, a projector given as the model (or the reverse), or the name is taken.
    """
    store = store or ModelStore()
    progress = progress or NullProgress()
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelNotFoundError(f"Model file not found: {path}")
    name = (name or default_name(path)).strip()
    if not name or "/" in name or "\\" in name:
        raise StoreError(f"Invalid model name {name!r}: use letters, digits, '-', '_', '.', ':'.")
    if any(e.name.lower() == name.lower() for e in store.list()):
        raise StoreError(
            f"A model named {name!r} is already in the store; `gemma-local models rm {name}` first, "
            "or pick another --name."
        )
    model_info = read_gguf(path)
    if model_info.is_projector:
        raise StoreError(f"{path.name} is a vision projector, not a model; pass it with --mmproj.", path=str(path))
    files: list[tuple[str, Path]] = [("model", p) for p in _parts(path)]
    if mmproj is not None:
        mmproj = mmproj.expanduser().resolve()
        if not mmproj.is_file():
            raise ModelNotFoundError(f"Vision projector not found: {mmproj}")
        if not read_gguf(mmproj).is_projector:
            raise StoreError(f"{mmproj.name} is not a vision projector (no clip.* metadata).", path=str(mmproj))
        files.append(("mmproj", mmproj))
    progress.start(total=sum(p.stat().st_size for _, p in files), done=0, description=f"hashing {name}")
    try:
        stored = []
        for role, file in files:
            progress.note(file.name)
            sha256 = sha256_file(file, progress)
            target = file
            if copy:
                target = store.files_dir / "local" / sha256[:16] / file.name
                copy_into(file, target)
            stored.append(
                StoredFile(role=role, path=store.relative(target), size=file.stat().st_size, sha256=sha256)  # type: ignore[arg-type]
            )
    finally:
        progress.close()
    entry = store.new_entry(
        name=name,
        source="import",
        quant=(model_info.quant or "").lower() or None,
        files=stored,
        vision=mmproj is not None,
        managed=copy,
    )
    return store.register(entry)
