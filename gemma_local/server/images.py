"""Images sent to the API (data URLs, http(s) URLs, base64) → the engine's ``ImagePart``.

Images are decoded and re-encoded as RGB PNG here, so the engine only ever sees valid images
and identical pictures share one digest (the engine reuses their encoding).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io

import anyio.to_thread
import httpx
from PIL import Image, UnidentifiedImageError

from gemma_local.engine import ImagePart
from gemma_local.errors import InvalidRequestError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT_S = 15.0


def _normalise(data: bytes, param: str) -> ImagePart:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InvalidRequestError(
            "The image could not be decoded; send a PNG, JPEG, GIF or WebP image.", param=param
        ) from e
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    png = out.getvalue()
    return ImagePart(data=png, digest=hashlib.sha256(png).hexdigest())


async def image_from_base64(data: str, *, param: str) -> ImagePart:
    """Decode base64 image bytes (Anthropic ``source.data``, the payload of a data URL)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidRequestError("The image data is not valid base64.", param=param) from e
    if len(raw) > MAX_IMAGE_BYTES:
        raise InvalidRequestError(f"The image is larger than {MAX_IMAGE_BYTES} bytes.", param=param)
    return await anyio.to_thread.run_sync(_normalise, raw, param)


async def image_from_url(url: str, *, param: str) -> ImagePart:
    """A ``data:image/...;base64,`` URL, or an http(s) URL fetched now.

    Raises:
        InvalidRequestError: not a supported URL, not reachable (offline), or not an image.
    """
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidRequestError("Image data URLs must be base64: data:image/png;base64,...", param=param)
        return await image_from_base64(payload, param=param)
    if not url.startswith(("http://", "https://")):
        raise InvalidRequestError("Image URLs must be http(s) or data: URLs.", param=param)
    try:
        async with (
            httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            response.raise_for_status()
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise InvalidRequestError(f"The image is larger than {MAX_IMAGE_BYTES} bytes.", param=param)
                chunks.append(chunk)
    except httpx.HTTPError as e:
        raise InvalidRequestError(
            f"The image at {url} could not be downloaded ({type(e).__name__}). The server may be offline: "
            "send the image inline as a data: URL instead.",
            param=param,
        ) from e
    return await anyio.to_thread.run_sync(_normalise, b"".join(chunks), param)
