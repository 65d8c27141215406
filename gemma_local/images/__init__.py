"""Images in requests: decode, validate and normalise them, and fetch remote ones safely.

A leaf package: it imports only ``errors``, ``settings`` (for typing) and the engine's
:class:`~gemma_local.engine.types.ImagePart` dataclass, never the engine or the server. The
server's three APIs and the CLI call :mod:`gemma_local.images.resolve`. (The check of a vision
projector file lives in the engine, :mod:`gemma_local.engine.projector`: the engine imports
nothing from here.)
"""

from gemma_local.images.datauri import decode_base64, parse_data_uri
from gemma_local.images.decode import ALLOWED_FORMATS, load_image
from gemma_local.images.fetch import RemoteImagePolicy, fetch_image
from gemma_local.images.resolve import (
    ImagePolicy,
    aimage_from_base64,
    aimage_from_url_or_data,
    image_from_base64,
    image_from_path,
    image_from_url_or_data,
)

__all__ = [
    "ALLOWED_FORMATS",
    "ImagePolicy",
    "RemoteImagePolicy",
    "aimage_from_base64",
    "aimage_from_url_or_data",
    "decode_base64",
    "fetch_image",
    "image_from_base64",
    "image_from_path",
    "image_from_url_or_data",
    "load_image",
    "parse_data_uri",
]
