"""Every tunable of gemma-local, and the only reader of ``GEMMA_LOCAL_*`` environment variables.

Precedence is flag > env > default, decided here once: each field ``x`` is read from
``GEMMA_LOCAL_X`` (an empty variable counts as unset), and a command passes only the flags the
user gave (its options are derived from these fields by :func:`gemma_local.cli_support.setting_option`,
default ``None``, never reading the environment themselves). One class per concern, so a module
asks for what it uses:

- :class:`AppSettings`: where files live (``GEMMA_LOCAL_HOME``, ``GEMMA_LOCAL_CACHE``), ``GEMMA_LOCAL_DEBUG``;
- :class:`EngineSettings`: how llama.cpp is set up (model, context, slots, threads, KV cache, …);
- :class:`ServerSettings`: the HTTP server (bind address, key, limits, shutdown grace period);
- :class:`WorkerSettings`: ``gemma-local worker``, lending this machine over llama.cpp RPC;
- :class:`SearchSettings`: the search hook's providers (and ``LINKUP_API_KEY``, the Linkup SDK's own name).

Nothing here imports the rest of gemma-local: it sits at the bottom with ``errors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "AppSettings",
    "EngineSettings",
    "FlashAttention",
    "KvCacheType",
    "SearchSettings",
    "ServerSettings",
    "Speculative",
    "WorkerSettings",
    "env_var",
]

ENV_PREFIX = "GEMMA_LOCAL_"
KvCacheType = Literal["f16", "q8_0", "q4_0"]
FlashAttention = Literal["auto", "on", "off"]
Speculative = Literal["auto", "off", "ngram", "draft"]


class _Settings(BaseSettings):
    # An empty variable (`GEMMA_LOCAL_API_KEY= gemma-local serve`) counts as unset, as it did
    # when click read some of these.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)


def env_var(field: str) -> str:
    """The environment variable of a settings field: ``ctx`` → ``GEMMA_LOCAL_CTX``."""
    return f"{ENV_PREFIX}{field.upper()}"


class AppSettings(_Settings):
    """Where gemma-local keeps its files, and how the CLI reports failures."""

    home: Path | None = Field(
        None,
        description="Root of the model store, databases and search index (default: models/ in a source "
        "checkout, else the user data dir).",
    )
    cache: Path | None = Field(
        None, description="Rebuildable files such as the assembled embedded model (default: the user cache dir)."
    )
    debug: bool = Field(False, description="Show full tracebacks instead of one-line errors, as --debug does.")


class EngineSettings(_Settings):
    """How the llama.cpp engine is set up."""

    model: str | None = Field(
        None,
        description="Model name in the store, or a GGUF path (default: serve offers every stored model and the "
        "embedded one, loaded on demand; other commands use the embedded Gemma 3 270M).",
    )
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
        False, description="Full-size cache on sliding-window layers (6× the KV memory for Gemma 3; for debugging)."
    )
    gpu_layers: int | None = Field(
        None, ge=-1, description="Layers offloaded to the GPU (-1 = all, 0 = CPU only; default: planned)."
    )
    checkpoints: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Sliding-window checkpoints kept per slot, so a prompt edited far back reuses the cache "
        "up to the edit (default: planned: 8 where memory allows, up to 32 while they take at most a quarter "
        "of the memory left; 0: none).",
    )
    checkpoint_every: int | None = Field(
        None,
        ge=256,
        le=131072,
        description="Prompt tokens between two sliding-window checkpoints (default: the model's sliding "
        "window, 512 tokens on Gemma 3 270M, 1024 on the larger ones).",
    )
    prefix_disk: bool = Field(
        True,
        description="Save the KV of long prompts under GEMMA_LOCAL_HOME/prefix-cache and load it back, so a "
        "restarted server or a new session does not compute a long shared prefix again.",
    )
    prefix_disk_max_gib: float = Field(
        8.0,
        gt=0,
        le=1048576,
        description="GiB the on-disk prefix cache may take (all models); the least recently used prompts go first.",
    )
    prefix_disk_min_tokens: int = Field(
        2048,
        ge=256,
        le=1048576,
        description="A prompt is saved to the disk prefix cache when it has at least this many tokens not saved yet.",
    )
    speculative: Speculative = Field(
        "auto",
        description="Speculative decoding: ngram drafts tokens from the request's own prompt and output "
        "(prompt lookup); draft has the --draft-model guess them; either is verified in the same batch and "
        "adaptive (it pauses where drafts miss and when more than 2 slots generate); auto = for greedy requests "
        "only, with the draft model when one is given, else ngram; off decodes one token at a time.",
    )
    draft_model: str | None = Field(
        None,
        description="A small model of the same vocabulary that drafts for the served one (a name in the store, "
        "or a GGUF path; e.g. gemma-3-270m for gemma-3-27b); used by --speculative draft and auto.",
    )
    draft_max: int = Field(8, ge=1, le=32, description="Most draft tokens a slot verifies per step.")
    max_queue: int = Field(64, ge=0, le=100000, description="Requests allowed to wait for a free slot.")
    seed: int | None = Field(None, description="Default sampling seed when a request gives none.")
    rpc: str | None = Field(
        None,
        description="RPC workers (`gemma-local worker` on other machines) to split the model over, as "
        "HOST:PORT[,HOST:PORT...]; their free memory is planned with this machine's.",
    )
    tensor_split: str | None = Field(
        None,
        description="Share of the offloaded layers per device, comma-separated in --rpc order then local GPUs "
        "(e.g. 3,1; default: planned from each device's free memory).",
    )


class ServerSettings(_Settings):
    """How the HTTP server is set up."""

    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(8080, ge=0, le=65535, description="Port (0: any free one).")
    api_key: str | None = Field(None, description="Require this key (Bearer or x-api-key).")
    cors_origins: list[str] = Field(
        default_factory=list, description="Allow browser calls from this origin (off if none)."
    )
    max_output_tokens: int = Field(8192, ge=1, le=131072, description="Cap on output tokens per answer.")
    force_tool: str | None = Field(
        None,
        description="Force one call to this tool at the start of each user turn of a request that offers it and "
        "leaves tool_choice at auto (then the model answers freely): makes a small model take a client's tool "
        "round trip, for tests.",
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    allow_remote_images: bool = Field(
        False,
        description="Fetch http(s) image URLs in requests (public addresses only, size- and time-limited); "
        "off: clients must send images inline.",
    )
    allowed_image_hosts: list[str] = Field(
        default_factory=list,
        description="A host remote images may come from even if it is private, loopback or link-local.",
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
    shutdown_grace: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds answers in progress get to finish on Ctrl-C or SIGTERM before they are ended.",
    )
    # --- serving the store on demand (serve without --model) ---
    keep_alive: str = Field(
        "5m",
        description="How long a model stays loaded once idle, e.g. 30s, 5m, 1h; 0 unloads it after each request, "
        "-1 keeps it loaded. A request's keep_alive field overrides it (not with --model).",
    )
    max_loaded: int | None = Field(
        None, ge=1, le=64, description="Most models loaded at once (default: as many as memory holds)."
    )
    max_memory_gib: float | None = Field(
        None,
        gt=0,
        description="GiB the loaded models may take together (default: what the memory planner may use on "
        "this machine); the least recently used idle model is unloaded to make room.",
    )
    model_aliases: list[str] = Field(
        default_factory=list,
        description="NAME=MODEL: requests for NAME get MODEL, e.g. gpt-4o=gemma-3-12b.",
    )
    load_timeout: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Seconds a request waits for its model to load before a 503 with Retry-After (the load goes on).",
    )
    admin_key: str | None = Field(
        None,
        description="Key for POST /v1/models/{id}/load and /unload (default: the API key; with neither, open).",
    )


class WorkerSettings(_Settings):
    """How ``gemma-local worker`` lends this machine to another over llama.cpp's RPC protocol."""

    worker_host: str = Field(
        "127.0.0.1",
        description="Address to bind; loopback by default. The RPC protocol has NO authentication: bind "
        "another address only on a trusted network or a tunnel.",
    )
    worker_port: int = Field(50052, ge=1, le=65535, description="Port to listen on.")
    worker_devices: list[str] = Field(
        default_factory=list,
        description="Device to serve, e.g. cpu, cuda:0 (default: every GPU, else the CPU).",
    )
    worker_threads: int | None = Field(None, ge=1, le=512, description="CPU threads (default: physical cores).")
    worker_cache_dir: Path | None = Field(
        None,
        description="Keep received tensors here so a reconnecting client sends hashes, not the weights again "
        "(off unless given).",
    )


class SearchSettings(_Settings):
    """How the search hook finds sources."""

    model_config = SettingsConfigDict(populate_by_name=True)

    search_providers: str | None = Field(
        None,
        description="Search providers to ask, in order, comma-separated (e.g. local,zim); default: the "
        "configured online ones, then local and zim.",
    )
    search_timeout: float = Field(6.0, ge=0.1, le=120, description="Seconds each search provider may take.")
    search_max_results: int = Field(5, ge=1, le=20, description="Sources asked of a provider.")
    search_retry_after: float = Field(
        30.0, ge=0, le=3600, description="Seconds a provider that failed or timed out is skipped."
    )
    searxng_url: str | None = Field(None, description="A SearXNG instance to search (its JSON API on).")
    linkup_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("linkup_api_key", "GEMMA_LOCAL_LINKUP_API_KEY", "LINKUP_API_KEY"),
        description="Linkup API key (env LINKUP_API_KEY); enables the linkup provider.",
    )
    linkup_base_url: str = Field("https://api.linkup.so/v1", description="Linkup API root.")
    linkup_depth: Literal["fast", "standard", "deep"] = Field("standard", description="Linkup search depth.")
    search_index: Path | None = Field(None, description="The local index database (default: HOME/search.db).")
    zim_registry: Path | None = Field(None, description="The list of ZIM archives (default: HOME/zim-archives.json).")

    def provider_names(self) -> list[str] | None:
        """The providers named by ``search_providers``, or ``None`` for the default chain."""
        if self.search_providers is None or not self.search_providers.strip():
            return None
        return [n.strip().lower() for n in self.search_providers.split(",") if n.strip()]
