"""Where the search hook's files live: the path ``SearchSettings`` names, else one in the home dir."""

from __future__ import annotations

from pathlib import Path

from gemma_local.paths import data_file
from gemma_local.settings import SearchSettings

__all__ = ["index_path", "zim_registry_path"]

INDEX_FILE = "search.db"
ZIM_REGISTRY_FILE = "zim-archives.json"


def index_path(settings: SearchSettings) -> Path:
    """Where the local index lives."""
    return settings.search_index or data_file(INDEX_FILE)


def zim_registry_path(settings: SearchSettings) -> Path:
    """Where the ZIM archive list lives."""
    return settings.zim_registry or data_file(ZIM_REGISTRY_FILE)
