"""Server-sent events: framing and the streaming response every API uses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel


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


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    """Stream ``events``. A client disconnect cancels the iterator (and so its generation)."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        # no-transform / X-Accel-Buffering: proxies must pass each event on at once.
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )
