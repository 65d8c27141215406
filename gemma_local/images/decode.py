"""Bytes → a validated, normalised :class:`ImagePart` (RGB PNG + sha256), with Pillow.

What is accepted, and why:

* Formats are sniffed from the bytes, never from a file name or a declared media type:
  JPEG (and MPO, the multi-picture JPEG many cameras write), PNG, GIF, WebP and BMP. The first
  four are what the OpenAI and Anthropic APIs document; BMP is uncompressed, so it costs nothing
  to support for the CLI. Everything else Pillow could open (TIFF, ICO, PSD, …) is refused
  with ``unsupported_format``: fewer parsers on untrusted input, and the APIs we mirror refuse
  them too. SVG (XML text) is recognised and refused by name.
* Size limits are checked before any pixel is decoded: the byte count first, then the
  width × height from the header (Pillow reads only the header in ``Image.open``). Pillow's own
  decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, a process-wide global) is left alone;
  it still fires for headers above twice its limit, which we report the same way.
* Normalisation: the first frame of an animation, EXIF orientation applied, transparency
  composited on white (a model sees black for transparent pixels otherwise), palette / CMYK /
  greyscale / 16-bit modes converted to 8-bit RGB. The result is re-encoded as PNG with no
  metadata (EXIF, GPS, ICC are dropped), so the same picture always has the same digest and
  the engine can reuse its encoding.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageOps, UnidentifiedImageError

from gemma_local.engine.types import ImagePart
from gemma_local.errors import ImageError

#: Formats accepted, as Pillow's openers name them (sniffed from the bytes). Pillow's JPEG opener
#: also returns multi-picture (MPO) files, as ``img.format == "MPO"``.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
#: What error messages call the accepted formats.
ALLOWED_FORMATS_TEXT = "PNG, JPEG, GIF, WebP or BMP"

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000

# Modes whose alpha channel is composited on white before dropping it.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# 16/32-bit integer greyscale: Pillow's convert("RGB") clips these to 255 instead of scaling.
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def load_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    param: str | None = None,
) -> ImagePart:
    """Validate and normalise one image.

    Args:
        data: The image file's bytes, in any accepted format.
        max_bytes: Largest accepted input, in bytes.
        max_pixels: Largest accepted width × height (checked from the header, before decoding).
        param: The request parameter the image came from, for the error.

    Returns:
        The image as 8-bit RGB PNG bytes and the sha256 hex digest of those bytes.

    Raises:
        ImageError: ``too_large``, ``not_an_image``, ``unsupported_format``, ``too_many_pixels``
            or ``truncated`` (cut short or corrupt).
    """
    if len(data) > max_bytes:
        raise ImageError(
            f"The image is {len(data):,} bytes; the limit is {max_bytes:,}. Send a smaller or more "
            "compressed image (e.g. JPEG), or raise the server's max_image_bytes.",
            reason="too_large",
            param=param,
        )
    if not data:
        raise ImageError("The image is empty (0 bytes).", reason="not_an_image", param=param)
    img = _open(data, param)
    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError("The image has no pixels (width or height is 0).", reason="not_an_image", param=param)
        if width * height > max_pixels:
            raise _too_many_pixels(f"{width}×{height}", max_pixels, param)
        try:
            img.seek(0)  # first frame of an animated GIF / WebP / APNG / MPO
            img.load()
        except Image.DecompressionBombError as e:
            raise _too_many_pixels("a frame", max_pixels, param) from e
        except Exception as e:  # Pillow raises OSError, SyntaxError, EOFError, ValueError… on bad data
            raise ImageError(
                f"The {img.format} image is truncated or corrupt ({e}); re-export or re-send it.",
                reason="truncated",
                param=param,
            ) from e
        rgb = _to_rgb(_apply_orientation(img), param)
        out = io.BytesIO()
        # Low zlib effort: these bytes never leave the process, and level 6 is several times slower.
        rgb.save(out, format="PNG", compress_level=1)
    finally:
        img.close()
    png = out.getvalue()
    return ImagePart(data=png, digest=hashlib.sha256(png).hexdigest())


def _open(data: bytes, param: str | None) -> Image.Image:
    """``Image.open`` restricted to the accepted formats; explains what else it might be."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"The image declares too many pixels to decode safely ({e}). Send a smaller image.",
            reason="too_many_pixels",
            param=param,
        ) from e
    except UnidentifiedImageError:
        pass
    except Exception as e:  # a recognised format whose header is broken
        raise ImageError(
            f"The image is truncated or corrupt: its header cannot be read ({e}); re-export or re-send it.",
            reason="truncated",
            param=param,
        ) from e
    looks_like = _signature(data)
    if looks_like is not None:
        raise ImageError(
            f"The data starts like a {looks_like} file, but it is truncated or corrupt (its header cannot be "
            "read); re-export or re-send it.",
            reason="truncated",
            param=param,
        )
    other = _sniff_other_format(data)
    if other is not None:
        raise ImageError(
            f"{other} images are not supported; convert it to {ALLOWED_FORMATS_TEXT}.",
            reason="unsupported_format",
            param=param,
        )
    raise ImageError(
        f"The data is not an image (expected {ALLOWED_FORMATS_TEXT}; the format is read from the bytes, "
        "not the file name or media type).",
        reason="not_an_image",
        param=param,
    )


def _signature(data: bytes) -> str | None:
    """The accepted format whose magic bytes ``data`` starts with (Pillow rejected the rest)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith(b"BM") and len(data) >= 14:
        return "BMP"  # "BM" alone is too common a text prefix to call it a bitmap
    return None


def _sniff_other_format(data: bytes) -> str | None:
    """The name of a format we refuse (SVG, or anything else Pillow knows), if ``data`` is one."""
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    try:
        # Header only: Image.open never decodes pixels. Any failure just means "not an image".
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format)
    except Exception:
        return None


def _too_many_pixels(what: str, max_pixels: int, param: str | None) -> ImageError:
    return ImageError(
        f"The image is {what} pixels; the limit is {max_pixels:,} pixels in all. Downscale it (Gemma 3 "
        "sees images at 896×896 anyway), or raise the server's max_image_pixels.",
        reason="too_many_pixels",
        param=param,
    )


def _apply_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        # A malformed EXIF block is not worth refusing the picture over: keep it unrotated.
        return img


def _to_rgb(img: Image.Image, param: str | None) -> Image.Image:
    mode = img.mode
    if mode == "P" and img.palette is not None and img.palette.mode == "RGBA":
        mode = "PA"  # palette entries with their own alpha (e.g. WebP → P, some PNGs)
    try:
        if mode in _ALPHA_MODES or (mode in {"P", "L", "RGB"} and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        if mode in _WIDE_GREY_MODES:
            # Scale 0..65535 down to 0..255 (convert("L") alone would clip at 255).
            return img.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
        return img if mode == "RGB" else img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(
            f"Images in colour mode {img.mode} are not supported ({e}); convert it to 8-bit RGB.",
            reason="unsupported_format",
            param=param,
        ) from e
