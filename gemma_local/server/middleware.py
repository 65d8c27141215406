"""ASGI middleware: the request body limit and the one-line-per-request log.

Both are plain ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass through untouched
and a client disconnect still reaches the route.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemma_local.server.errors import HostNotAllowedError, RequestTooLargeError, error_response
from gemma_local.server.metrics import ServerMetrics

logger = logging.getLogger("gemma_local.server")

RECORD_KEY = "gemma_local_record"
#: Paths polled by monitors: logged at DEBUG so they do not drown the request log.
QUIET_PATHS = frozenset({"/health", "/metrics"})


class BodyLimitMiddleware:
    """Answer 413 to bodies over ``max_bytes``, whether sent with Content-Length or chunked.

    A declared Content-Length over the limit is refused before reading anything. Otherwise the
    body is read up to the limit and replayed to the app; routes need the whole body anyway.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body, the only message left is the client going away.
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(RequestTooLargeError(self.max_bytes), scope.get("path", ""))
        response.headers["Connection"] = "close"  # the unread rest of the body makes the connection unusable
        await response(scope, receive, send)


class LoopbackHostMiddleware:
    """On a loopback-bound server, answer 403 to requests whose ``Host`` is not a loopback name.

    A web page cannot reach a local server across origins (no CORS), but with DNS rebinding
    its own name (``evil.example``) resolves to 127.0.0.1 and its requests become
    same-origin: they would be served, and the answers read. Such requests still carry the
    page's name in ``Host``; the server's own clients say ``localhost``, ``127.0.0.1`` or
    ``[::1]``. (A server bound beyond loopback is meant to be reached by other names; its
    protection is the API key.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host")
            if host is not None and not is_loopback_name(_host_name(host)):
                response = error_response(HostNotAllowedError(host), scope.get("path", ""))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_loopback_name(name: str) -> bool:
    """``localhost`` (and ``*.localhost``, RFC 6761), 127.0.0.0/8 and ``::1``."""
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    if host.startswith("["):  # [::1]:8080
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


@dataclass
class RequestRecord:
    """What one request did; the pipeline fills in the generation fields as they become known."""

    request_id: str = "-"
    model: str | None = None
    #: The model that answered (its own id), when the request got one.
    served_model: str | None = None
    #: ``model`` is not here and ``served_model``, the default, answered instead.
    substituted: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    time_to_first_token_s: float | None = None
    tokens_per_s: float | None = None
    finish: str | None = None

    def line(self, method: str, path: str, status: int, elapsed_s: float) -> str:
        ttft = f"{self.time_to_first_token_s:.3f}s" if self.time_to_first_token_s is not None else "-"
        tps = f"{self.tokens_per_s:.1f}" if self.tokens_per_s is not None else "-"
        return (
            f"{self.request_id} {method} {path} status={status} in={self.prompt_tokens} "
            f"out={self.completion_tokens} cached={self.cached_tokens} ttft={ttft} tok/s={tps} "
            f"finish={self.finish or '-'} time={elapsed_s:.3f}s{self.model_field()}"
        )

    def model_field(self) -> str:
        """`` model=ID`` (the model that answered), `` model=A->B (substituted)``, or nothing."""
        if self.served_model is None:
            return ""
        if self.substituted:
            return f" model={self.model}->{self.served_model} (substituted)"
        return f" model={self.served_model}"

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers that say which model answered, and any substitution."""
        out = []
        if self.request_id != "-":
            out.append((b"x-request-id", self.request_id.encode()))
        if self.served_model is not None:
            out.append((b"x-gemma-local-model", self.served_model.encode("ascii", "replace")))
        if self.substituted and self.model is not None:
            note = f"{self.model} is not available here; served by {self.served_model}"
            out.append((b"x-gemma-local-substitution", note.encode("ascii", "replace")))
        return out


class RequestLogMiddleware:
    """Give each request a :class:`RequestRecord`; log it and count it when the response ends."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = RequestRecord()
        scope.setdefault("state", {})[RECORD_KEY] = record
        status = 500  # if the app dies before answering, Starlette sends a 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = record.headers()
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            path = scope.get("path", "")
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            logger.log(level, record.line(scope.get("method", "-"), path, status, time.perf_counter() - started))
