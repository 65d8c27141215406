"""Strict base64 and ``data:`` URI parsing for images sent inline.

Only standard base64 (RFC 4648 §4, ``+`` and ``/``, with padding) is accepted; ASCII
whitespace is ignored because line-wrapped output (``base64`` on Linux wraps at 76 columns)
is common and harmless. A data URI must be ``data:image/<type>[;param=value]*;base64,<data>``;
the declared type only has to be an image type, since the real format is read from the bytes.
"""

from __future__ import annotations

import base64
import binascii
import re

from gemma_local.errors import ImageError

_WHITESPACE = re.compile(rb"[ \t\r\n\f\v]+")
_MEDIA_TYPE = re.compile(r"^image/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def decode_base64(data: str | bytes, *, max_bytes: int | None = None, param: str | None = None) -> bytes:
    """Decode standard base64, refusing anything else.

    Args:
        data: The base64 text (ASCII whitespace is ignored).
        max_bytes: Refuse, before decoding, input that would decode to more bytes than this.
        param: The request parameter the data came from, for the error.

    Returns:
        The decoded bytes.

    Raises:
        ImageError: ``bad_base64`` (empty, bad characters, bad padding) or ``too_large``.
    """
    raw = data.encode("ascii", errors="replace") if isinstance(data, str) else data
    raw = _WHITESPACE.sub(b"", raw)
    if not raw:
        raise ImageError("The image data is empty.", reason="bad_base64", param=param)
    if max_bytes is not None and len(raw) // 4 * 3 > max_bytes + 2:
        raise ImageError(
            f"The image is about {len(raw) // 4 * 3:,} bytes; the limit is {max_bytes:,}. Send a smaller image.",
            reason="too_large",
            param=param,
        )
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        hint = " (URL-safe base64 with - and _ is not accepted)" if re.search(rb"[-_]", raw) else ""
        raise ImageError(
            f"The image data is not valid base64: {e}{hint}. Encode the file's bytes with standard base64.",
            reason="bad_base64",
            param=param,
        ) from e


def parse_data_uri(uri: str, *, max_bytes: int | None = None, param: str | None = None) -> tuple[str, bytes]:
    """Split a ``data:image/...;base64,...`` URI into its media type and decoded bytes.

    Args:
        uri: The whole URI, starting with ``data:`` (case-insensitive).
        max_bytes: Refuse, before decoding, payloads that would decode to more bytes than this.
        param: The request parameter the URI came from, for the error.

    Returns:
        ``(media_type, data)``: the declared type, lower-cased (e.g. ``image/png``), and the bytes.

    Raises:
        ImageError: ``bad_data_uri`` (no comma, no image media type, not base64),
            ``bad_base64`` or ``too_large``.
    """
    if uri[:5].lower() != "data:":
        raise ImageError("Not a data: URI.", reason="bad_data_uri", param=param)
    header, comma, payload = uri[5:].partition(",")
    example = "Use data:image/png;base64,<base64 of the file>."
    if not comma:
        raise ImageError(f"The data: URI has no comma before its data. {example}", reason="bad_data_uri", param=param)
    fields = [f.strip() for f in header.split(";")]
    media_type = fields[0].lower()
    if not _MEDIA_TYPE.match(media_type):
        shown = media_type or "none"
        raise ImageError(
            f"The data: URI's media type must be an image type (image/png, image/jpeg, …), not {shown}. {example}",
            reason="bad_data_uri",
            param=param,
        )
    if fields[-1].lower() != "base64":
        raise ImageError(
            f"Image data: URIs must be base64-encoded (…;base64,…). {example}", reason="bad_data_uri", param=param
        )
    return media_type, decode_base64(payload, max_bytes=max_bytes, param=param)
