"""Loading the images a translated request names (:class:`ImageRef`) before the engine sees them.

Translators stay pure: they put an :class:`ImageRef` where an image stands. Here the vision
check happens once per request, before anything is fetched or decoded (a text-only model
refuses a request with images without touching them), and each distinct image is loaded once.
"""

from __future__ import annotations

from collections.abc import Sequence

from gemma_local.engine import ChatMessage
from gemma_local.engine.types import ImagePart, ImageRef
from gemma_local.errors import ModelCapabilityError
from gemma_local.images import ImagePolicy, aimage_from_base64, aimage_from_url_or_data


def image_refs(messages: Sequence[ChatMessage]) -> list[ImageRef]:
    """Every image reference in ``messages``, in order."""
    return [part for message in messages for part in message.content if isinstance(part, ImageRef)]


def check_vision(messages: Sequence[ChatMessage], *, vision: bool, model_id: str) -> None:
    """Refuse images for a model that cannot read them.

    Raises:
        ModelCapabilityError: ``messages`` hold an image and the model has no projector (400).
    """
    if vision:
        return
    if any(isinstance(part, ImageRef | ImagePart) for message in messages for part in message.content):
        raise ModelCapabilityError(
            f"The loaded model '{model_id}' cannot read images (no vision projector). "
            "Serve a Gemma 3 4B, 12B or 27B model with its mmproj file.",
            param="messages",
        )


async def load_images(messages: tuple[ChatMessage, ...], policy: ImagePolicy) -> tuple[ChatMessage, ...]:
    """``messages`` with every :class:`ImageRef` replaced by the loaded image.

    Raises:
        ImageError: an image is unusable, too large, or its URL may not be fetched (400).
    """
    if not image_refs(messages):
        return messages
    loaded: dict[tuple[str | None, str | None], ImagePart] = {}
    out = []
    for message in messages:
        parts = []
        for part in message.content:
            if isinstance(part, ImageRef):
                key = (part.url, part.base64)
                if key not in loaded:
                    loaded[key] = await _load(part, policy)
                parts.append(loaded[key])
            else:
                parts.append(part)
        out.append(ChatMessage(role=message.role, content=tuple(parts), tool_calls=message.tool_calls))
    return tuple(out)


async def _load(ref: ImageRef, policy: ImagePolicy) -> ImagePart:
    if ref.base64 is not None:
        return await aimage_from_base64(ref.base64, ref.media_type, policy, param=ref.param)
    return await aimage_from_url_or_data(ref.url or "", policy, param=ref.param)
