"""Hashing: sha256 of files on disk (stored models, resumed partial downloads, imports)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from gemma_local.hub.progress import NullProgress, Progress

__all__ = ["FileCheck", "check_file", "hash_into", "sha256_file"]

BLOCK = 8 * 2**20  # big reads: hashing is disk-bound, and 16 GB in 1 MiB reads costs syscalls


def hash_into(digest: hashlib._Hash, path: Path, *, limit: int | None = None, progress: Progress | None = None) -> int:
    """Feed the first ``limit`` bytes of ``path`` (all when ``None``) into ``digest``; return the count."""
    progress = progress or NullProgress()
    done = 0
    with path.open("rb") as f:
        while limit is None or done < limit:
            want = BLOCK if limit is None else min(BLOCK, limit - done)
            block = f.read(want)
            if not block:
                break
            digest.update(block)
            done += len(block)
            progress.advance(len(block))
    return done


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """The sha256 (hex) of a whole file."""
    digest = hashlib.sha256()
    hash_into(digest, path, progress=progress)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileCheck:
    """One file's verdict from ``models verify``."""

    path: str
    status: Literal["ok", "missing", "size_mismatch", "sha256_mismatch"]
    expected_sha256: str
    actual_sha256: str | None = None
    expected_size: int | None = None
    actual_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict:
        return asdict(self)


def check_file(path: Path, *, sha256: str, size: int, progress: Progress | None = None) -> FileCheck:
    """Re-hash ``path`` and compare it with what was recorded when it was stored."""
    if not path.is_file():
        return FileCheck(str(path), "missing", sha256, expected_size=size)
    actual_size = path.stat().st_size
    if actual_size != size:
        return FileCheck(str(path), "size_mismatch", sha256, expected_size=size, actual_size=actual_size)
    actual = sha256_file(path, progress)
    status: Literal["ok", "sha256_mismatch"] = "ok" if actual == sha256 else "sha256_mismatch"
    return FileCheck(str(path), status, sha256, actual, size, actual_size)
