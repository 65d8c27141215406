"""Images through llama.cpp's multimodal library (mtmd), one requesting sequence at a time.

llama-cpp-python's ``MTMDChatHandler`` resets the whole KV cache on every call and re-encodes
every image each turn, so the engine drives the ``mtmd_*`` functions itself:

- :meth:`VisionProjector.encode` turns an image into the tokens around it (Gemma's
  ``<start_of_image>``/``<end_of_image>``, as mtmd writes them) and its soft-token embeddings.
  It runs on the submitting thread, so a slow vision tower never stalls running streams, and
  caches results by the image's content hash: a conversation that re-sends an image does not
  encode it again.
- The scheduler decodes the embeddings into the requesting sequence only, in a decode call of
  their own with non-causal attention (see ``Scheduler._decode_image``).
"""

from __future__ import annotations

import ctypes
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp

from gemma_local.engine import llama_log
from gemma_local.engine.projector import validate_mmproj
from gemma_local.engine.types import ImagePart
from gemma_local.errors import InvalidRequestError, ModelLoadError

#: Encoded images kept for reuse (each is n_tokens × n_embd floats: 5.5 MB for Gemma 3 27B).
ENCODED_CACHE_SIZE = 32


@dataclass(frozen=True)
class EncodedImage:
    """One image, ready to decode: text tokens before it, its embeddings, text tokens after."""

    digest: str
    prefix_tokens: tuple[int, ...]
    embeddings: np.ndarray  # float32 [n_tokens, n_embd]
    suffix_tokens: tuple[int, ...]
    non_causal: bool

    @property
    def n_tokens(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def placeholder(self) -> int:
        """A token id that stands for this image in prefix matching (negative: never a real token)."""
        return -1 - int(self.digest[:7], 16)


class VisionProjector:
    """A loaded mmproj file bound to a text model."""

    def __init__(self, mmproj_path: str | Path, text_model, *, n_threads: int, use_gpu: bool = True) -> None:
        self.path = Path(mmproj_path)
        validate_mmproj(self.path, text_model.n_embd)  # a missing file, or one that would crash mtmd
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        params.n_threads = n_threads
        params.warmup = False
        llama_log.clear()
        self._ctx = mtmd_cpp.mtmd_init_from_file(str(self.path).encode(), text_model.model, params)
        if not self._ctx:
            details = llama_log.recent_errors()
            raise ModelLoadError(
                f"llama.cpp could not load the vision projector {self.path}"
                + (": " + " / ".join(details) if details else ".")
                + " Check that it belongs to this model (same size: 4B, 12B or 27B).",
                path=str(self.path),
            )
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            self.close()
            raise ModelLoadError(f"{self.path} is not a vision projector.", path=str(self.path))
        self.n_embd = llama_cpp.llama_model_n_embd_inp(text_model.model)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, EncodedImage] = OrderedDict()
        self.encode_count = 0  # images actually run through the vision tower (cache misses)

    def encode(self, image: ImagePart) -> EncodedImage:
        """Tokens and embeddings for one image (cached by content hash).

        Raises:
            InvalidRequestError: the image cannot be decoded or llama.cpp fails to encode it.
        """
        with self._lock:
            cached = self._cache.get(image.digest)
            if cached is not None:
                self._cache.move_to_end(image.digest)
                return cached
            encoded = self._encode_locked(image)
            self._cache[image.digest] = encoded
            if len(self._cache) > ENCODED_CACHE_SIZE:
                self._cache.popitem(last=False)
            return encoded

    def _encode_locked(self, image: ImagePart) -> EncodedImage:
        from PIL import Image

        with Image.open(io.BytesIO(image.data)) as img:
            rgb = img.convert("RGB")
        raw = rgb.tobytes()
        data = (ctypes.c_uint8 * len(raw)).from_buffer_copy(raw)
        bitmap = mtmd_cpp.mtmd_bitmap_init(rgb.width, rgb.height, data)
        if not bitmap:
            raise InvalidRequestError("llama.cpp could not take this image.", param="messages")
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            part = mtmd_cpp.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(mtmd_cpp.mtmd_input_part) * 1)(ctypes.pointer(part))
            if mtmd_cpp.mtmd_tokenize_from_parts(self._ctx, chunks, parts, 1, False) != 0:
                raise InvalidRequestError("llama.cpp could not tokenize this image.", param="messages")
            prefix: list[int] = []
            suffix: list[int] = []
            embeddings = None
            non_causal = True
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                kind = mtmd_cpp.mtmd_input_chunk_get_type(chunk)
                if kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t(0)
                    ptr = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    (prefix if embeddings is None else suffix).extend(ptr[i] for i in range(n.value))
                elif kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    if embeddings is not None:
                        raise InvalidRequestError("One image produced several image chunks.", param="messages")
                    n_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
                    if mtmd_cpp.mtmd_encode_chunk(self._ctx, chunk) != 0:
                        raise InvalidRequestError("llama.cpp failed to encode this image.", param="messages")
                    out = mtmd_cpp.mtmd_get_output_embd(self._ctx)
                    embeddings = np.ctypeslib.as_array(out, shape=(n_tokens * self.n_embd,)).copy()
                    embeddings = embeddings.reshape(n_tokens, self.n_embd)
                    non_causal = bool(mtmd_cpp.mtmd_decode_use_non_causal(self._ctx, chunk))
            if embeddings is None:
                raise InvalidRequestError("llama.cpp produced no image tokens for this image.", param="messages")
            self.encode_count += 1
            return EncodedImage(image.digest, tuple(prefix), embeddings, tuple(suffix), non_causal)
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            mtmd_cpp.mtmd_bitmap_free(bitmap)

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            mtmd_cpp.mtmd_free(self._ctx)
            self._ctx = None
