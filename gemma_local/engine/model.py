"""Load a Gemma 3 GGUF with llama.cpp and own the raw model/context handles.

This is the only module that creates llama.cpp models and contexts. Settings that the
``Llama()`` wrapper gets wrong for Gemma 3 are chosen here on purpose: threads = physical
cores, flash attention where supported, ``swa_full=False`` (interleaved sliding-window cache),
one KV stream per sequence slot.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import psutil

from gemma_local.engine import llama_log, rpc
from gemma_local.engine.chat_format import RenderedPrompt, Special
from gemma_local.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"

_KV_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}
_FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def physical_cores() -> int:
    """Physical cores: llama.cpp's decode is memory-bound and SMT siblings only contend."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


_BUFFER_LINE = re.compile(r"^(\w+):\s+(\S+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")


@dataclass(frozen=True)
class Allocations:
    """What llama.cpp reported allocating, in bytes, by kind (summed over devices)."""

    model: int = 0
    kv: int = 0
    compute: int = 0
    output: int = 0
    by_device: tuple[tuple[str, str, int], ...] = ()

    @property
    def total(self) -> int:
        return self.model + self.kv + self.compute + self.output

    @classmethod
    def from_log(cls, lines: list[str]) -> Allocations:
        sums = {"model": 0, "KV": 0, "compute": 0, "output": 0}
        rows = []
        for line in lines:
            m = _BUFFER_LINE.match(line.strip())
            if m:
                size = int(float(m.group(4)) * 1024 * 1024)
                sums[m.group(3)] += size
                rows.append((m.group(2), m.group(3), size))
        return cls(sums["model"], sums["KV"], sums["compute"], sums["output"], tuple(rows))


@dataclass(frozen=True)
class ContextParams:
    """What the engine asks of llama.cpp. ``n_ctx_per_seq`` × ``n_seq`` cells in all."""

    n_ctx_per_seq: int
    n_seq: int = 1
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int | None = None
    n_threads_batch: int | None = None
    kv_type: str = "f16"
    flash_attn: str = "auto"
    swa_full: bool = False
    gpu_layers: int = -1
    #: RPC workers (HOST:PORT) whose devices the layers may go to (see :mod:`gemma_local.engine.rpc`).
    rpc_servers: tuple[str, ...] = ()
    #: Repack weights for this CPU's fastest kernels (llama.cpp's "extra buffer types"). RPC
    #: workers never repack, so a local run matches a split one bit for bit only without it.
    repack: bool = True
    #: Share of the offloaded layers per device (RPC devices first, then local GPUs); () = llama.cpp's.
    tensor_split: tuple[float, ...] = ()
    #: Rows of logits one sequence may ask for in one batch (1 + the most draft tokens).
    n_outputs_per_seq: int = 1


def check_gguf_file(path: Path) -> None:
    """Fail early, with a clear message, on files llama.cpp would reject (or crash on)."""
    if not path.exists():
        raise ModelNotFoundError(f"Model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file.", path=str(path))
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"Cannot read model file {path}: {e.strerror}.", path=str(path)) from e
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF model file (it does not start with the GGUF magic bytes). "
            "Re-download it with `gemma-local pull`, or check the path.",
            path=str(path),
        )


#: Markup tokens of Gemma 3 that are not "control" tokens, so llama.cpp would parse them in text.
_MARKUP_TOKENS = frozenset({"<start_of_image>", "<end_of_image>", "[multimodal]"})
_MARKUP_SPLIT = re.compile("(" + "|".join(re.escape(m) for m in sorted(_MARKUP_TOKENS)) + ")")


def _ran_out_of_memory(log_lines: list[str]) -> bool:
    # llama.cpp says so only in its log ("failed to allocate ... buffer", "unable to allocate").
    return any("alloc" in line.lower() and ("fail" in line.lower() or "unable" in line.lower()) for line in log_lines)


def token_piece(vocab, token: int) -> bytes:
    """The bytes ``token`` of ``vocab`` stands for (control tokens render as nothing)."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n]


class LlamaModel:
    """A loaded model and its context. Not thread-safe: the scheduler thread owns decoding."""

    def __init__(self, path: str | os.PathLike[str], params: ContextParams) -> None:
        llama_log.install()
        self.path = Path(path)
        check_gguf_file(self.path)
        if params.kv_type != "f16" and params.flash_attn == "off":
            raise InvalidRequestError(
                f"A {params.kv_type} KV cache needs flash attention; use --flash-attn auto or on, or --kv-type f16.",
                param="kv_type",
            )
        self.params = params
        self.n_threads = params.n_threads or physical_cores()
        self.n_threads_batch = params.n_threads_batch or self.n_threads

        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = params.gpu_layers if params.gpu_layers >= 0 else 2**31 - 1
        model_params.use_extra_bufts = params.repack
        if params.rpc_servers:
            # Registered devices are what llama.cpp's loader splits layers over (RPC ones first).
            rpc.add_workers(params.rpc_servers)
        self._devices = rpc.model_devices(params.rpc_servers)
        if self._devices is not None:
            model_params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        if params.tensor_split:
            self._tensor_split = (ctypes.c_float * llama_cpp.llama_max_devices())(*params.tensor_split)
            model_params.tensor_split = self._tensor_split
        llama_log.clear()
        with llama_log.capture() as load_log:
            self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not self.model:
            message = self._failure(f"llama.cpp could not load {self.path}")
            if _ran_out_of_memory(load_log):
                message += (
                    " The weights did not fit in memory: use a smaller quantization of the model "
                    "(`gemma-local pull gemma-3-27b:q4_0`, or a smaller model such as gemma-3-4b), "
                    "or offload fewer layers to the GPU (--gpu-layers)."
                )
            raise ModelLoadError(message, path=str(self.path))
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.ctx = None
        try:
            self.metadata = self._read_metadata()
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
            self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
            self.n_embd = llama_cpp.llama_model_n_embd(self.model)
            self.n_layer = llama_cpp.llama_model_n_layer(self.model)
            self.n_swa = 0 if params.swa_full else llama_cpp.llama_model_n_swa(self.model)
            self.bos = llama_cpp.llama_vocab_bos(self.vocab)
            with llama_log.capture() as context_log:
                self._create_context(params)
            self.allocations = Allocations.from_log(load_log + context_log)
        except Exception:
            self.close()
            raise
        self._piece_cache: dict[int, bytes] = {}
        self._special_ids = self._lookup_special_tokens()

    # --- setup ------------------------------------------------------------------------------

    def _create_context(self, p: ContextParams) -> None:
        if p.n_ctx_per_seq > self.n_ctx_train:
            raise InvalidRequestError(
                f"Context {p.n_ctx_per_seq} is larger than this model was trained for "
                f"({self.n_ctx_train} tokens); use --ctx {self.n_ctx_train} or less.",
                param="ctx",
            )
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = p.n_ctx_per_seq * p.n_seq
        cp.n_batch = max(p.n_batch, p.n_ubatch)
        cp.n_ubatch = p.n_ubatch
        cp.n_seq_max = p.n_seq
        # The scheduler asks for one row of logits per sequence per batch (more only for a
        # slot verifying drafts). Telling llama.cpp so shrinks the compute buffer by
        # n_vocab × n_ubatch × 4 bytes (512 MiB for Gemma's 262k vocabulary at n_ubatch 512)
        # that would otherwise be reserved for nothing.
        per_seq = max(1, p.n_outputs_per_seq)
        cp.n_outputs_max = p.n_seq * per_seq
        cp.n_outputs_max_per_seq = per_seq
        cp.n_threads = self.n_threads
        cp.n_threads_batch = self.n_threads_batch
        cp.flash_attn_type = _FLASH_ATTN[p.flash_attn]
        cp.type_k = _KV_TYPES[p.kv_type]
        cp.type_v = _KV_TYPES[p.kv_type]
        cp.swa_full = p.swa_full
        # One KV stream per sequence: a slot's context cannot be eaten by its neighbours, and
        # its attention never runs over cells interleaved with theirs. The scheduler orders
        # each batch by sequence id, which llama.cpp needs to decode one token of every
        # stream in one micro-batch (then per-slot streams are as fast as a unified cache).
        cp.kv_unified = False
        cp.no_perf = True
        cp.embeddings = False
        llama_log.clear()
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise ModelLoadError(
                self._failure(
                    f"llama.cpp could not create a context of {p.n_ctx_per_seq} tokens × {p.n_seq} slots "
                    f"({p.kv_type} KV cache); this is usually a lack of memory: try a smaller --ctx, "
                    "fewer --parallel slots, --kv-type q8_0, or a smaller quantization"
                ),
                path=str(self.path),
            )
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_ctx_per_seq = llama_cpp.llama_n_ctx_seq(self.ctx)
        self.n_batch = cp.n_batch

    def _failure(self, what: str) -> str:
        details = llama_log.recent_errors()
        return what + (": " + " / ".join(details) if details else ".")

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(4096)
        for i in range(llama_cpp.llama_model_meta_count(self.model)):
            if llama_cpp.llama_model_meta_key_by_index(self.model, i, buf, len(buf)) < 0:
                continue
            key = buf.value.decode("utf-8", errors="replace")
            if llama_cpp.llama_model_meta_val_str_by_index(self.model, i, buf, len(buf)) < 0:
                continue
            out[key] = buf.value.decode("utf-8", errors="replace")
        return out

    def _lookup_special_tokens(self) -> dict[str, int]:
        ids = {}
        for text in ("<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"):
            toks = self.tokenize(text, special=True)
            if len(toks) == 1:
                ids[text] = toks[0]
        return ids

    # --- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokenize without adding BOS. ``special`` parses control-token text as control tokens.

        Raises:
            InvalidRequestError: the text is not valid Unicode (a lone UTF-16 surrogate, which
                JSON's ``\\ud800`` escapes can carry) and so has no UTF-8 form to tokenize.
        """
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidRequestError(
                f"The text contains an unpaired UTF-16 surrogate ({text[e.start]!r} at character {e.start}), "
                "which is not valid Unicode. Send valid UTF-8 text.",
                code="invalid_text",
            ) from e
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, special)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, special)
        return list(buf[:n])

    def tokenize_prompt(self, prompt: RenderedPrompt) -> list[int]:
        """Tokens of a rendered prompt: control tokens parsed, user text taken literally.

        Text only: a prompt's images are encoded by the engine (``Engine.build_prompt``), which
        passes their text around them here one segment at a time.
        """
        tokens: list[int] = []
        for seg in prompt.segments:
            if isinstance(seg, Special):
                if seg.text == "<bos>":
                    tokens.append(self.bos)
                else:
                    tokens.extend(self.tokenize(seg.text, special=True))
            else:
                tokens.extend(self.tokenize_text(seg))  # type: ignore[arg-type]  # text only, see above
        return tokens

    def tokenize_text(self, text: str) -> list[int]:
        """Tokens of text taken literally: it cannot produce a control token or a markup token.

        Gemma's image markers are "user-defined" tokens, which llama.cpp matches in any text,
        special parsing or not; only the renderer may place them (around an image's soft
        tokens). In text they are spelled out: ``<`` and the rest tokenized apart.
        """
        if not any(marker in text for marker in _MARKUP_TOKENS):
            return self.tokenize(text, special=False)
        tokens: list[int] = []
        for piece in _MARKUP_SPLIT.split(text):
            if piece in _MARKUP_TOKENS:
                tokens += self.tokenize(piece[:1]) + self.tokenize(piece[1:])
            elif piece:
                tokens += self.tokenize(piece)
        return tokens

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        piece = self._piece_cache.get(token)
        if piece is None:
            piece = self._piece_cache[token] = token_piece(self.vocab, token)
        return piece

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def special_id(self, text: str) -> int | None:
        return self._special_ids.get(text)

    # --- description -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.metadata.get("general.name") or self.path.stem

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "unknown")

    def close(self) -> None:
        if getattr(self, "ctx", None):
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            llama_cpp.llama_model_free(self.model)
            self.model = None
