"""Where gemma-local keeps its files.

``GEMMA_LOCAL_HOME`` wins; otherwise a source checkout uses its own ``models/`` folder and an
installed package uses the user's data dir (``platformdirs``).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

_CHECKOUT_MODELS = Path(__file__).resolve().parent.parent / "models"


def home_dir() -> Path:
    """The root of gemma-local's data: model store, databases, search index."""
    env = os.environ.get("GEMMA_LOCAL_HOME")
    if env:
        path = Path(env).expanduser()
    elif (_CHECKOUT_MODELS / "README.md").is_file():
        path = _CHECKOUT_MODELS
    else:
        path = Path(platformdirs.user_data_dir("gemma-local", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Rebuildable files (the assembled embedded model); safe to delete."""
    env = os.environ.get("GEMMA_LOCAL_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("gemma-local", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_file(name: str) -> Path:
    """A file (database, registry) at the top of the home dir."""
    return home_dir() / name
