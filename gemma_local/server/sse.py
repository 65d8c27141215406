"""Server-sent events: framing and the streaming response every API uses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send


def _json(payload: BaseModel | dict[str, Any] | str) -> str:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json()
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def sse_data(payload: BaseModel | dict[str, Any] | str) -> bytes:
    """``data: <json>`` and the blank line that ends an event (OpenAI Chat Completions)."""
    return f"data: {_json(payload)}\n\n".encode()


def sse_event(event: str, payload: BaseModel | dict[str, Any] | str) -> bytes:
    """``event: <name>`` + ``data: <json>`` (Responses and Anthropic streams name their events)."""
    return f"event: {event}\ndata: {_json(payload)}\n\n".encode()


class _EventStreamResponse(StreamingResponse):
    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None] | None) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            # no-transform / X-Accel-Buffering: proxies must pass each event on at once.
            headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A client that leaves before the first event never starts the iterator, so its
            # cleanup would never run: stop the generation here too.
            if self._on_close is not None:
                self._on_close()


def sse_response(events: AsyncIterator[bytes], *, on_close: Callable[[], None] | None = None) -> StreamingResponse:
    """Stream ``events``; ``on_close`` (e.g. ``generation.cancel``) runs when the response ends.

    A client disconnect cancels the iterator at once (Starlette listens for it while streaming).
    """
    return _EventStreamResponse(events, on_close)
