"""One table from error *types* to HTTP statuses and API error envelopes.

Every failure the server reports goes through :func:`describe`: gemma-local's own errors
(``gemma_local.errors``), the HTTP-only ones below, Starlette's ``HTTPException`` (unknown
routes, wrong methods) and FastAPI's validation errors. Nothing here looks at message text.

Each API has its own envelope, chosen by the path it serves (:data:`ERROR_STYLES`), so every
handler and middleware answers a route in its API's format:

    openai:     {"error": {"message", "type", "param", "code"}}
    anthropic:  {"type": "error", "error": {"type", "message"}}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from gemma_local.errors import (
    ContextOverflowError,
    EngineClosedError,
    GemmaLocalError,
    GenerationError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServerBusyError,
)

logger = logging.getLogger("gemma_local.server")


# --- errors that exist only at the HTTP layer ---------------------------------------------


class AuthenticationError(GemmaLocalError):
    """The API key is missing or wrong (HTTP 401)."""

    code = "invalid_api_key"


class RouteNotFoundError(GemmaLocalError):
    """No endpoint at this path (HTTP 404)."""

    code = "not_found"


class ResourceNotFoundError(GemmaLocalError):
    """A stored object the request names (a response id) does not exist (HTTP 404)."""

    code = "not_found"


class HostNotAllowedError(GemmaLocalError):
    """A loopback-bound server got a request for another host name: DNS rebinding (HTTP 403)."""

    code = "host_not_allowed"

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(
            f"This server only answers requests addressed to localhost, not {host[:100]!r}. Use "
            "http://127.0.0.1:PORT, or start it with --host to serve other names (then set an API key)."
        )


class MethodNotAllowedError(GemmaLocalError):
    """The path exists but not for this HTTP method (HTTP 405)."""

    code = "method_not_allowed"


class RequestTooLargeError(GemmaLocalError):
    """The request body is larger than ``ServerSettings.max_body_bytes`` (HTTP 413)."""

    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"The request body is larger than this server accepts ({limit} bytes). Send a smaller request, "
            "or start the server with a larger GEMMA_LOCAL_MAX_BODY_BYTES."
        )


class ClientDisconnectedError(GemmaLocalError):
    """The client went away before its answer was ready; the generation was cancelled."""

    code = "client_disconnected"

    def __init__(self) -> None:
        super().__init__("The client closed the connection; the generation was cancelled.")


class EngineNotReadyError(GemmaLocalError):
    """The model is still loading, or failed to load (HTTP 503)."""

    code = "model_loading"

    def __init__(self, message: str = "The model is still loading; retry in a few seconds.") -> None:
        super().__init__(message)


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorKind:
    """How one error type is reported: HTTP status and the error ``type`` in each API."""

    status: int
    openai_type: str
    anthropic_type: str
    #: Seconds in ``Retry-After``; a callable reads it from the exception.
    retry_after: int | Callable[[BaseException], int] | None = None
    #: ``x-should-retry: false`` stops SDKs retrying a fault that will not go away.
    retryable: bool = True


_INVALID = ErrorKind(400, "invalid_request_error", "invalid_request_error")

#: Looked up along the exception's MRO, so a subclass uses its nearest listed ancestor.
ERROR_TABLE: Mapping[type[BaseException], ErrorKind] = {
    ContextOverflowError: _INVALID,
    InvalidRequestError: _INVALID,
    RequestValidationError: _INVALID,
    AuthenticationError: ErrorKind(401, "authentication_error", "authentication_error"),
    ModelNotFoundError: ErrorKind(404, "invalid_request_error", "not_found_error"),
    RouteNotFoundError: ErrorKind(404, "invalid_request_error", "not_found_error"),
    ResourceNotFoundError: ErrorKind(404, "invalid_request_error", "not_found_error"),
    HostNotAllowedError: ErrorKind(403, "permission_error", "permission_error", retryable=False),
    MethodNotAllowedError: ErrorKind(405, "invalid_request_error", "invalid_request_error"),
    RequestTooLargeError: ErrorKind(413, "invalid_request_error", "request_too_large"),
    # nginx's "client closed request": only ever seen in the log, the client is gone.
    ClientDisconnectedError: ErrorKind(499, "invalid_request_error", "invalid_request_error"),
    ServerBusyError: ErrorKind(
        429, "rate_limit_error", "rate_limit_error", retry_after=lambda e: getattr(e, "retry_after_s", 1)
    ),
    EngineNotReadyError: ErrorKind(503, "server_error", "overloaded_error", retry_after=5),
    ModelNotReadyError: ErrorKind(
        503, "server_error", "overloaded_error", retry_after=lambda e: getattr(e, "retry_after_s", 5)
    ),
    EngineClosedError: ErrorKind(503, "server_error", "overloaded_error", retry_after=5),
    ModelLoadError: ErrorKind(503, "server_error", "api_error", retryable=False),
    GenerationError: ErrorKind(500, "server_error", "api_error"),
    GemmaLocalError: ErrorKind(500, "server_error", "api_error", retryable=False),
    # Anything else is a bug in gemma-local.
    BaseException: ErrorKind(500, "server_error", "api_error", retryable=False),
}


def kind_of(exc: BaseException) -> ErrorKind:
    """The table row for ``exc``'s type (nearest ancestor listed)."""
    for cls in type(exc).__mro__:
        kind = ERROR_TABLE.get(cls)
        if kind is not None:
            return kind
    return ERROR_TABLE[BaseException]  # pragma: no cover - BaseException is always in the MRO


@dataclass(frozen=True)
class ErrorInfo:
    """Everything an envelope needs, independent of the API."""

    kind: ErrorKind
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return self.kind.status


def _anthropic_overflow(exc: ContextOverflowError) -> str:
    # The hosted API's wording, which Claude Code parses (both numbers) to decide how much of
    # the conversation to compact. M is the longest prompt accepted, so that N > M holds.
    return f"prompt is too long: {exc.n_prompt_tokens} tokens > {exc.max_prompt_tokens} maximum"


#: Messages an API's own clients read, written from the error's fields. Looked up by
#: (type along the MRO, style); everything else uses the error's own message.
STYLE_MESSAGES: Mapping[tuple[type[BaseException], str], Callable[[Any], str]] = {
    (ContextOverflowError, "anthropic"): _anthropic_overflow,
}


def _style_message(exc: BaseException, style: str) -> str | None:
    for cls in type(exc).__mro__:
        render = STYLE_MESSAGES.get((cls, style))
        if render is not None:
            return render(exc)
    return None


def describe(exc: BaseException, style: str = "openai") -> ErrorInfo:
    """Turn any exception into the fields every error envelope is built from.

    Args:
        exc: the failure.
        style: the API reporting it, for the few errors whose message that API's clients parse
            (``STYLE_MESSAGES``).
    """
    if isinstance(exc, RequestValidationError):
        return _describe_validation(exc)
    if isinstance(exc, StarletteHTTPException):
        exc = _from_http_exception(exc)
    kind = kind_of(exc)
    if isinstance(exc, GemmaLocalError):
        message, param, code = _style_message(exc, style) or exc.message, exc.param, exc.code
    else:
        message, param, code = "The server had an error while processing your request.", None, "internal_error"
    headers: dict[str, str] = {}
    if kind.retry_after is not None:
        seconds = kind.retry_after(exc) if callable(kind.retry_after) else kind.retry_after
        headers["Retry-After"] = str(seconds)
    if not kind.retryable:
        headers["x-should-retry"] = "false"
    return ErrorInfo(kind=kind, message=message, param=param, code=code, headers=headers)


def _from_http_exception(exc: StarletteHTTPException) -> BaseException:
    if exc.status_code == 404:
        return RouteNotFoundError("Not found: no such endpoint. The API lives under /v1 (see /docs).")
    if exc.status_code == 405:
        return MethodNotAllowedError("Method not allowed for this endpoint (see /docs).")
    if exc.status_code == 413:
        return RequestTooLargeError(0)
    return InvalidRequestError(str(exc.detail)) if exc.status_code < 500 else GemmaLocalError(str(exc.detail))


# --- validation errors: 400 naming the parameter ------------------------------------------

# Segments pydantic inserts into ``loc`` for union members; they are not parameter names.
_UNION_TAGS = frozenset(
    {"str", "int", "float", "bool", "none", "list", "dict", "system", "developer", "user", "assistant", "tool"}
    | {"text", "image_url", "refusal"}
    # Responses items and parts, Anthropic blocks and tool choices.
    | {"message", "function_call", "function_call_output", "reasoning", "input_text", "input_image", "output_text"}
    | {"json_object", "json_schema", "image", "tool_use", "tool_result", "base64", "url"}
    | {"auto", "any"}
)


def param_path(loc: Sequence[Any]) -> str | None:
    """``("body", "messages", 0, "user", "content")`` → ``"messages[0].content"``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for i, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 0:
            out = str(part)
        elif part in _UNION_TAGS or not str(part).replace("_", "a").isalnum():
            continue
        else:
            out += f".{part}"
    return out or None


_NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type", "missing"})


def _describe_validation(exc: RequestValidationError) -> ErrorInfo:
    errors = list(exc.errors())
    if not errors:
        return ErrorInfo(kind=_INVALID, message="Invalid request.", code="invalid_value")
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return ErrorInfo(
            kind=_INVALID,
            message=f"We could not parse the JSON body of your request ({reason}). Send valid JSON.",
            code="invalid_json",
        )
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in _NOT_AN_OBJECT:
        # Also what a missing or non-JSON Content-Type leads to: such bodies are not parsed, so a
        # web page cannot post to a local server without a CORS preflight.
        return ErrorInfo(
            kind=_INVALID,
            message="The request body must be a JSON object, sent with `Content-Type: application/json`.",
            code="invalid_json",
        )
    param = param_path(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
        code = "missing_required_parameter"
    elif param is None:
        message = f"Invalid request body: {msg}."
        code = "invalid_value"
    else:
        message = f"Invalid value for '{param}': {msg}."
        code = "invalid_value"
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in this request.)"
    return ErrorInfo(kind=_INVALID, message=message, param=param, code=code)


# --- envelopes and API styles --------------------------------------------------------------


def openai_envelope(info: ErrorInfo) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": info.message, "type": info.kind.openai_type, "param": info.param, "code": info.code}}


def anthropic_envelope(info: ErrorInfo) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": info.kind.anthropic_type, "message": info.message}}


ErrorStyle = Literal["openai", "anthropic"]
Envelope = Callable[[ErrorInfo], dict[str, Any]]

_ENVELOPES: dict[ErrorStyle, Envelope] = {"openai": openai_envelope, "anthropic": anthropic_envelope}
#: Path prefix → the API style of the routes under it (the rest are OpenAI's), longest first.
ERROR_STYLES: tuple[tuple[str, ErrorStyle], ...] = (("/v1/messages", "anthropic"),)


def style_for_path(path: str) -> ErrorStyle:
    """The error style of the API that serves ``path``."""
    for prefix, style in ERROR_STYLES:
        if path.startswith(prefix):
            return style
    return "openai"


def error_body(exc: BaseException, style: ErrorStyle = "openai") -> dict[str, Any]:
    """The envelope for ``exc`` in an API's style (also used for mid-stream error events)."""
    return _ENVELOPES[style](describe(exc, style))


def error_response(exc: BaseException, path: str) -> JSONResponse:
    """A complete HTTP error response for ``exc`` as the API at ``path`` reports it."""
    style = style_for_path(path)
    info = describe(exc, style)
    body = _ENVELOPES[style](info)
    return JSONResponse(body, status_code=info.status, headers=info.headers)


# --- FastAPI wiring --------------------------------------------------------------------------


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    response = error_response(exc, request.url.path)
    if isinstance(exc, StarletteHTTPException) and exc.headers:
        response.headers.update(exc.headers)
    if response.status_code == 405:
        # RFC 9110: a 405 lists every method the resource has. Starlette names only the first
        # route that matched the path, and GET and DELETE of one path are separate routes.
        response.headers["Allow"] = ", ".join(sorted(_allowed_methods(request)))
    if response.status_code >= 500:
        # Our own errors carry their explanation; anything else is a bug and needs its traceback.
        traceback = None if isinstance(exc, GemmaLocalError | StarletteHTTPException) else exc
        logger.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=traceback)
    return response


def _allowed_methods(request: Request) -> set[str]:
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        route_methods = getattr(context.original_route, "methods", None)
        if context.path and route_methods and compile_path(context.path)[0].match(request.url.path):
            methods |= set(route_methods)
    return methods


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, including FastAPI's own, answer in the API's envelope."""
    app.add_exception_handler(RequestValidationError, _handle)
    app.add_exception_handler(StarletteHTTPException, _handle)
    app.add_exception_handler(GemmaLocalError, _handle)
    # Registered for Exception, Starlette runs it in its outermost middleware: a real bug.
    app.add_exception_handler(Exception, _handle)
