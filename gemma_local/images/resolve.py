"""The one entry point per image source: what the three APIs and the CLI call.

================================  ==========================================================
source                            call
================================  ==========================================================
Chat ``image_url.url``            :func:`image_from_url_or_data` (data: URI or http(s) URL)
Responses ``input_image``         :func:`image_from_url_or_data` (its ``image_url`` string)
Anthropic ``source.type=base64``  :func:`image_from_base64` (``data``, ``media_type``)
Anthropic ``source.type=url``     :func:`image_from_url_or_data`
CLI ``--image PATH``, ``/image``  :func:`image_from_path` (never used for server requests)
================================  ==========================================================

Each returns a validated, normalised :class:`~gemma_local.engine.types.ImagePart` or raises
:class:`~gemma_local.errors.ImageError` (an ``InvalidRequestError``: HTTP 400). The functions
block (network, decoding); async code calls the ``a``-prefixed twins, which run them in a
worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from gemma_local.engine.types import ImagePart
from gemma_local.errors import ImageError
from gemma_local.images.datauri import decode_base64, parse_data_uri
from gemma_local.images.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image
from gemma_local.images.fetch import RemoteImagePolicy, fetch_image

if TYPE_CHECKING:
    from gemma_local.settings import ServerSettings


@dataclass(frozen=True)
class ImagePolicy:
    """Limits on every image, and whether remote URLs are fetched.

    Attributes:
        max_bytes: Largest encoded image accepted (inline or fetched).
        max_pixels: Largest width × height accepted.
        remote: The remote-URL policy (off by default).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    remote: RemoteImagePolicy = field(default_factory=RemoteImagePolicy)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ImagePolicy:
        """The policy a server's settings describe.

        Args:
            settings: ``allow_remote_images``, ``allowed_image_hosts``, ``max_image_bytes`` and
                ``max_image_pixels`` are read.

        Returns:
            The matching policy.
        """
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            remote=RemoteImagePolicy(
                enabled=settings.allow_remote_images,
                allowed_hosts=frozenset(settings.allowed_image_hosts),
                max_bytes=settings.max_image_bytes,
            ),
        )


def image_from_url_or_data(url: str, policy: ImagePolicy | None = None, *, param: str | None = None) -> ImagePart:
    """An image given as a ``data:`` URI or an http(s) URL (fetched only if the policy allows).

    Args:
        url: ``data:image/...;base64,...`` or ``http(s)://...``.
        policy: Limits and the remote policy (default: remote fetching off).
        param: The request parameter the URL came from, for the error.

    Returns:
        The validated, normalised image.

    Raises:
        ImageError: a bad data URI, a refused or failed fetch, or a bad image (see ``reason``).
    """
    policy = policy or ImagePolicy()
    url = url.strip()
    if url[:5].lower() == "data:":
        _, data = parse_data_uri(url, max_bytes=policy.max_bytes, param=param)
    else:
        scheme = url.partition(":")[0].lower() if ":" in url else ""
        if scheme not in ("http", "https"):
            raise ImageError(
                f"Image URLs must be http(s) URLs or data: URIs, not {(scheme + ':') if scheme else repr(url[:40])}. "
                "Send local files inline as data:image/png;base64,….",
                reason="bad_url",
                param=param,
            )
        data = fetch_image(url, policy.remote, param=param)
    return load_image(data, max_bytes=policy.max_bytes, max_pixels=policy.max_pixels, param=param)


def image_from_base64(
    data: str, media_type: str | None = None, policy: ImagePolicy | None = None, *, param: str | None = None
) -> ImagePart:
    """An image given as bare base64 (Anthropic's ``{"type": "base64", "media_type", "data"}``).

    Args:
        data: Standard base64 of the file's bytes.
        media_type: The declared type; it must be an ``image/…`` type when given, but the real
            format is read from the bytes.
        policy: Limits (the remote policy is not used).
        param: The request parameter the data came from, for the error.

    Returns:
        The validated, normalised image.

    Raises:
        ImageError: ``bad_base64``, ``unsupported_format`` (a non-image media type), or a bad image.
    """
    policy = policy or ImagePolicy()
    if media_type is not None and not media_type.strip().lower().startswith("image/"):
        raise ImageError(
            f"The image's media_type must be an image type (image/png, image/jpeg, …), not {media_type!r}.",
            reason="unsupported_format",
            param=param,
        )
    raw = decode_base64(data, max_bytes=policy.max_bytes, param=param)
    return load_image(raw, max_bytes=policy.max_bytes, max_pixels=policy.max_pixels, param=param)


def image_from_path(path: str | Path, policy: ImagePolicy | None = None) -> ImagePart:
    """An image file on this machine (the CLI's ``--image`` and ``/image``; never server requests).

    Args:
        path: The file; ``~`` is expanded.
        policy: Limits (the remote policy is not used).

    Returns:
        The validated, normalised image.

    Raises:
        ImageError: ``not_found`` (missing, a directory, unreadable) or a bad image.
    """
    policy = policy or ImagePolicy()
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
        if not file.is_file():
            raise ImageError(f"{file} is not a file.", reason="not_found", param="image")
        if size > policy.max_bytes:
            # Checked before reading, so a huge file is never loaded into memory.
            raise ImageError(
                f"{file} is {size:,} bytes; the limit is {policy.max_bytes:,}. Use a smaller image.",
                reason="too_large",
                param="image",
            )
        data = file.read_bytes()
    except FileNotFoundError as e:
        raise ImageError(f"Image file not found: {file}", reason="not_found", param="image") from e
    except OSError as e:
        raise ImageError(f"Cannot read image file {file}: {e.strerror}.", reason="not_found", param="image") from e
    return load_image(data, max_bytes=policy.max_bytes, max_pixels=policy.max_pixels, param="image")


async def aimage_from_url_or_data(
    url: str, policy: ImagePolicy | None = None, *, param: str | None = None
) -> ImagePart:
    """:func:`image_from_url_or_data` in a worker thread (for the server's event loop)."""
    return await anyio.to_thread.run_sync(lambda: image_from_url_or_data(url, policy, param=param))


async def aimage_from_base64(
    data: str, media_type: str | None = None, policy: ImagePolicy | None = None, *, param: str | None = None
) -> ImagePart:
    """:func:`image_from_base64` in a worker thread (for the server's event loop)."""
    return await anyio.to_thread.run_sync(lambda: image_from_base64(data, media_type, policy, param=param))
