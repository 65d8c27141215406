"""Search settings: flags > ``GEMMA_LOCAL_*`` env (and ``LINKUP_API_KEY``) > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gemma_local.paths import data_file

INDEX_FILE = "search.db"
ZIM_REGISTRY_FILE = "zim-archives.json"


class SearchSettings(BaseSettings):
    """How the search hook finds sources. Every field has an env var."""

    model_config = SettingsConfigDict(env_prefix="GEMMA_LOCAL_", extra="ignore", populate_by_name=True)

    search_providers: str | None = Field(
        None,
        description="Comma-separated providers to ask, in order (e.g. 'local,zim'); default: the "
        "configured online ones, then local and zim.",
    )
    search_timeout: float = Field(6.0, gt=0, le=120, description="Seconds each provider may take.")
    search_max_results: int = Field(5, ge=1, le=20, description="Sources asked of a provider.")
    search_retry_after: float = Field(
        30.0, ge=0, le=3600, description="Seconds a provider that failed or timed out is skipped."
    )
    searxng_url: str | None = Field(None, description="Root URL of a SearXNG instance with the JSON API on.")
    linkup_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("linkup_api_key", "GEMMA_LOCAL_LINKUP_API_KEY", "LINKUP_API_KEY"),
        description="Linkup API key (env LINKUP_API_KEY); enables the linkup provider.",
    )
    linkup_base_url: str = Field("https://api.linkup.so/v1", description="Linkup API root.")
    linkup_depth: Literal["fast", "standard", "deep"] = Field("standard", description="Linkup search depth.")
    search_index: Path | None = Field(None, description="The local index database (default: HOME/search.db).")
    zim_registry: Path | None = Field(
        None, description="The list of ZIM archives (default: HOME/zim-archives.json)."
    )

    def provider_names(self) -> list[str] | None:
        """The providers named by ``search_providers``, or ``None`` for the default chain."""
        if self.search_providers is None or not self.search_providers.strip():
            return None
        return [n.strip().lower() for n in self.search_providers.split(",") if n.strip()]

    def index_path(self) -> Path:
        """Where the local index lives."""
        return self.search_index or data_file(INDEX_FILE)

    def zim_registry_path(self) -> Path:
        """Where the ZIM archive list lives."""
        return self.zim_registry or data_file(ZIM_REGISTRY_FILE)
