"""One settings object for every tunable, read from flags > ``GEMMA_LOCAL_*`` env > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

KvCacheType = Literal["f16", "q8_0", "q4_0"]
FlashAttention = Literal["auto", "on", "off"]


class EngineSettings(BaseSettings):
    """How the llama.cpp engine is set up. Every field has a ``GEMMA_LOCAL_`` env var."""

    model_config = SettingsConfigDict(env_prefix="GEMMA_LOCAL_", extra="ignore")

    model: str | None = Field(None, description="Model name in the store, or a path to a GGUF file.")
    mmproj: str | None = Field(None, description="Vision projector GGUF (default: the one stored with the model).")
    ctx: int | None = Field(None, ge=256, le=131072, description="Context tokens per request slot (default: planned).")
    parallel: int | None = Field(None, ge=1, le=64, description="Requests generated at once (default: planned).")
    threads: int | None = Field(None, ge=1, le=512, description="CPU threads (default: physical cores).")
    batch_threads: int | None = Field(
        None, ge=1, le=512, description="CPU threads for prompt processing (default: threads)."
    )
    n_batch: int = Field(512, ge=32, le=65536, description="Tokens per llama_decode call.")
    n_ubatch: int = Field(512, ge=32, le=65536, description="Physical micro-batch size.")
    kv_type: KvCacheType | None = Field(
        None,
        description="KV cache type (default: f16, or q8_0 when f16 does not fit); quantized needs flash attention.",
    )
    flash_attn: FlashAttention = Field("auto", description="Flash attention: auto uses it where supported.")
    swa_full: bool = Field(
        False, description="Full-size cache on sliding-window layers (wastes memory; off by default)."
    )
    gpu_layers: int | None = Field(
        None, ge=-1, description="Layers offloaded to the GPU (-1 = all, 0 = CPU only; default: planned)."
    )
    max_queue: int = Field(64, ge=0, le=100000, description="Requests allowed to wait for a free slot.")
    seed: int | None = Field(None, description="Default sampling seed when a request gives none.")


class ServerSettings(BaseSettings):
    """How the HTTP server is set up."""

    model_config = SettingsConfigDict(env_prefix="GEMMA_LOCAL_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(8080, ge=0, le=65535)
    api_key: str | None = Field(None, description="Require this key (Bearer or x-api-key).")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins (off if empty).")
    max_output_tokens: int = Field(8192, ge=1, le=131072, description="Server cap on output tokens.")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    allow_remote_images: bool = Field(
        False, description="Fetch images given as http(s) URLs (off: clients must send images inline)."
    )
    allowed_image_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts whose image URLs may resolve to private, loopback or link-local addresses.",
    )
    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, description="Largest image accepted, in bytes."
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1024, le=1_000_000_000, description="Largest image accepted, in pixels (width × height)."
    )
    responses_db: Path | None = Field(
        None, description="SQLite file of stored /v1/responses (default: responses.db in the data dir)."
    )
    responses_max_stored: int = Field(
        10_000, ge=0, description="Stored responses kept at most, the oldest deleted first (0: no limit)."
    )
    responses_max_age_days: float = Field(
        30.0, ge=0, description="Stored responses are deleted after this many days (0: no age limit)."
    )
