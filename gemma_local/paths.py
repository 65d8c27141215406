"""Where gemma-local keeps its files.

``GEMMA_LOCAL_HOME`` (read by :class:`~gemma_local.settings.AppSettings`) wins; otherwise a
source checkout uses its own ``models/`` folder and an installed package uses the user's data
dir (``platformdirs``). The settings are read on every call, so a changed environment (a test's
isolated home) takes effect at once.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

from gemma_local.settings import AppSettings

_CHECKOUT_MODELS = Path(__file__).resolve().parent.parent / "models"


def home_dir() -> Path:
    """The root of gemma-local's data: model store, databases, search index."""
    configured = AppSettings().home
    if configured is not None:
        path = configured.expanduser()
    elif (_CHECKOUT_MODELS / "README.md").is_file():
        path = _CHECKOUT_MODELS
    else:
        path = Path(platformdirs.user_data_dir("gemma-local", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Rebuildable files (the assembled embedded model); safe to delete."""
    configured = AppSettings().cache
    path = configured.expanduser() if configured else Path(platformdirs.user_cache_dir("gemma-local", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_file(name: str) -> Path:
    """A file (database, registry) at the top of the home dir."""
    return home_dir() / name
