"""The engine's public face: submit a request, get a stream of events back.

    engine = Engine(path)
    for event in engine.submit(GenerationRequest(messages=(ChatMessage.text("user", "Hi"),))):
        ...

``submit`` validates and tokenizes on the caller's thread (so bad requests fail at once, with
a typed error) and hands the job to the batching scheduler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gemma_local.engine import rpc
from gemma_local.engine.chat_format import RenderedPrompt, Special, render, render_raw
from gemma_local.engine.draft_model import DraftModel
from gemma_local.engine.drafting import SpeculationPolicy
from gemma_local.engine.kv_slots import CheckpointPolicy
from gemma_local.engine.model import ContextParams, LlamaModel
from gemma_local.engine.prefix_disk import DiskCachePolicy
from gemma_local.engine.sampling import SamplerChain
from gemma_local.engine.scheduler import Prompt, Scheduler, SchedulerStats
from gemma_local.engine.stream import GenerationStream
from gemma_local.engine.types import GenerationRequest, GenerationResult, ImagePart
from gemma_local.engine.vision import VisionProjector
from gemma_local.errors import ContextOverflowError, ModelCapabilityError, WorkerLostError

logger = logging.getLogger("gemma_local.engine")

DEFAULT_CTX = 8192
DEFAULT_PARALLEL = 4


@dataclass(frozen=True)
class ModelInfo:
    """What is loaded, for listings and the API's model objects."""

    id: str
    path: str
    architecture: str
    name: str
    size_bytes: int
    n_ctx_train: int
    n_ctx_per_slot: int
    n_slots: int
    n_embd: int
    n_layer: int
    vision: bool
    metadata: dict[str, str]


class Engine:
    """A loaded Gemma 3 model serving many requests at once.

    Args:
        model_path: the GGUF file.
        params: llama.cpp context parameters (context per slot, slots, KV type, threads...).
        max_queue: requests allowed to wait for a slot before ``ServerBusyError``.
        default_seed: seed for requests that give none (None: random per request).
        model_id: the id the model answers to (default: the file's stem).
        mmproj_path: a vision projector to load beside the model.
        checkpoints: how often and how many sliding-window checkpoints each slot keeps
            (default: :class:`CheckpointPolicy`'s).
        speculation: speculative decoding (default: off); a draft model it names
            (``draft_model``, a GGUF path) is loaded beside the model, one sequence per slot.
        prefix_disk: save long prompts' KV on disk and load it back, across restarts
            (default: off; :mod:`gemma_local.engine.prefix_disk`).

    Raises:
        ModelNotFoundError, ModelLoadError: the file (or the draft model's) is missing, not GGUF,
            or fails to load.
        DraftModelError: the draft model cannot draft for this one (another vocabulary).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        params: ContextParams | None = None,
        *,
        max_queue: int = 64,
        default_seed: int | None = None,
        model_id: str | None = None,
        mmproj_path: str | os.PathLike[str] | None = None,
        checkpoints: CheckpointPolicy | None = None,
        speculation: SpeculationPolicy | None = None,
        prefix_disk: DiskCachePolicy | None = None,
    ) -> None:
        params = params or ContextParams(n_ctx_per_seq=DEFAULT_CTX, n_seq=DEFAULT_PARALLEL)
        if speculation is not None and speculation.enabled:
            params = replace(params, n_outputs_per_seq=max(params.n_outputs_per_seq, speculation.draft_max + 1))
        self.model = LlamaModel(model_path, params)
        self.vision: VisionProjector | None = None
        self.draft: DraftModel | None = None
        try:
            if mmproj_path is not None:
                self.vision = VisionProjector(
                    mmproj_path, self.model, n_threads=self.model.n_threads, use_gpu=params.gpu_layers != 0
                )
            if speculation is not None and speculation.uses_draft_model:
                self.draft = DraftModel(speculation.draft_model, self.model, checkpoints)
        except Exception:
            if self.vision is not None:
                self.vision.close()
            self.model.close()
            raise
        self.default_seed = default_seed
        self.model_id = model_id or Path(model_path).stem
        #: Set when an RPC worker holding part of the model is lost: the engine serves no more.
        self.lost: WorkerLostError | None = None
        #: Called (from a llama.cpp thread) with that error, e.g. by a server to report itself degraded.
        self.on_worker_lost: Callable[[WorkerLostError], None] | None = None
        try:
            self._scheduler = Scheduler(
                self.model,
                max_queue=max_queue,
                checkpoints=checkpoints,
                speculation=speculation,
                draft=self.draft,
                prefix_disk=prefix_disk,
            )
        except Exception:
            if self.draft is not None:
                self.draft.close()
            if self.vision is not None:
                self.vision.close()
            self.model.close()
            raise
        if params.rpc_servers:
            rpc.watch_for_loss(params.rpc_servers, self._worker_lost)

    def _worker_lost(self, endpoint: str | None, message: str) -> None:
        error = WorkerLostError(endpoint)
        self.lost = error
        ended = self._scheduler.abandon(error) if self._scheduler is not None else 0
        logger.error("%s (%d request(s) ended; llama.cpp said: %s)", error.message, ended, message)
        if self.on_worker_lost is not None:
            self.on_worker_lost(error)

    @property
    def info(self) -> ModelInfo:
        m = self.model
        return ModelInfo(
            id=self.model_id,
            path=str(m.path),
            architecture=m.architecture,
            name=m.name,
            size_bytes=m.path.stat().st_size,
            n_ctx_train=m.n_ctx_train,
            n_ctx_per_slot=m.n_ctx_per_seq,
            n_slots=m.params.n_seq,
            n_embd=m.n_embd,
            n_layer=m.n_layer,
            vision=self.vision is not None,
            metadata=dict(m.metadata),
        )

    def render(self, request: GenerationRequest) -> RenderedPrompt:
        if request.prompt is not None:
            return render_raw(request.prompt)
        return render(request.messages, continue_final=request.continue_final_message)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The exact tokens the model will see for this request (an image's soft tokens are
        counted, each standing as a negative placeholder id)."""
        return self.build_prompt(request).tokens

    def build_prompt(self, request: GenerationRequest) -> Prompt:
        """Tokenize the rendered request, encoding its images (cached by content hash).

        Raises:
            ModelCapabilityError: the request has images and no vision projector is loaded.
        """
        rendered = self.render(request)
        if not rendered.images:
            return Prompt(self.model.tokenize_prompt(rendered))
        if self.vision is None:
            raise ModelCapabilityError(
                f"The model {self.model_id} has no vision: it cannot read images. Use a Gemma 3 4B, 12B or "
                "27B model with its vision projector (mmproj), or send text only.",
                param="messages",
            )
        tokens: list[int] = []
        images = {}
        for seg in rendered.segments:
            if isinstance(seg, ImagePart):
                encoded = self.vision.encode(seg)
                tokens.extend(encoded.prefix_tokens)
                images[len(tokens)] = encoded
                tokens.extend([encoded.placeholder] * encoded.n_tokens)
                tokens.extend(encoded.suffix_tokens)
            elif isinstance(seg, Special) and seg.text == "<bos>":
                tokens.append(self.model.bos)
            else:
                tokens.extend(self.model.tokenize_prompt(RenderedPrompt((seg,))))
        return Prompt(tokens, images)

    def submit(self, request: GenerationRequest) -> GenerationStream:
        """Queue a generation and return its stream at once.

        Raises:
            ChatFormatError: the conversation cannot be rendered.
            ContextOverflowError: the prompt leaves no room for output in a slot's context.
            InvalidRequestError: sampling options llama.cpp rejects (bad grammar, logit bias).
            ServerBusyError: every slot is busy and the waiting queue is full.
            EngineClosedError: the engine is shutting down.
        """
        prompt = self.build_prompt(request)
        n_ctx = self.model.n_ctx_per_seq
        if len(prompt.tokens) >= n_ctx:
            raise ContextOverflowError(n_prompt_tokens=len(prompt.tokens), n_ctx=n_ctx, max_tokens=request.max_tokens)
        sampler = SamplerChain(
            request.sampling, vocab=self.model.vocab, n_vocab=self.model.n_vocab, default_seed=self.default_seed
        )
        return self._scheduler.submit(request, prompt, sampler)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Submit and wait for the whole answer."""
        return self.submit(request).result()

    def clear_prefix_cache(self) -> None:
        """Forget the KV kept for prefix reuse (benchmarks use it to measure cold prompts)."""
        self._scheduler.clear_prefix_cache()

    def stats(self) -> SchedulerStats:
        return self._scheduler.stats()

    def cancel_all(self) -> int:
        """Cancel every generation running or waiting (a server's grace period is over); return
        how many were. Each stream ends with ``finish_reason='cancelled'``."""
        return self._scheduler.cancel_all()

    def close(self) -> None:
        """Finish the scheduler and free llama.cpp's memory. Idempotent.

        Blocks until the scheduler thread has stopped (after its current micro-batch at most):
        nothing is freed while it may still be inside llama.cpp.
        """
        rpc.unwatch(self._worker_lost)
        if getattr(self, "_scheduler", None) is not None:
            self._scheduler.close()
            self._scheduler = None
        if getattr(self, "lost", None) is not None:
            return  # the scheduler thread is stuck inside llama.cpp, on this model: free nothing
        if getattr(self, "vision", None) is not None:
            self.vision.close()
            self.vision = None
        if getattr(self, "draft", None) is not None:
            self.draft.close()
            self.draft = None
        if getattr(self, "model", None) is not None:
            self.model.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
