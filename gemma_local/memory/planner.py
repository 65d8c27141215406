"""Memory planner: what a model, a context and a slot count will cost, and defaults that fit.

Everything is computed from the GGUF header (layers, KV heads, head sizes, sliding window)
and the machine (:mod:`gemma_local.memory.machine`: what it has and how much a plan may use),
following how llama.cpp allocates:

- weights: the file, memory-mapped; plus the vision projector when one is loaded with it;
- KV cache, per sequence slot (one KV stream per slot): global-attention layers hold
  ``pad256(ctx)`` cells; with interleaved SWA (``swa_full=False``) the sliding-window layers
  hold only ``pad256(min(ctx, n_swa + n_ubatch))`` cells, otherwise ``pad256(ctx)`` like the rest;
  bytes per cell per layer = n_kv_heads × (k_dim × bytes(type_k) + v_dim × bytes(type_v));
- compute buffer: activations for one micro-batch plus the f16 attention mask over the cache
  (and, without flash attention, the f32 attention scores of one layer);
- output buffer: one row of logits per slot, or ``1 + draft_max`` with speculative decoding
  (a slot verifying drafts needs logits at each draft position; llama.cpp grows the buffer to
  that the first time a step asks for them);
- a draft model (draft-model speculative decoding, :mod:`gemma_local.engine.draft_model`): its
  weights, and its own KV (one sequence per slot), compute and output buffers, estimated as a
  model of its own with the same slots, KV type and context (capped at its trained context),
  and its checkpoints beside each slot's;
- sliding-window checkpoints (host memory, :mod:`gemma_local.engine.kv_slots`): per checkpoint,
  the window's ``n_swa`` cells on every sliding-window layer (llama.cpp saves only the cells
  still inside the window); ``checkpoints`` per slot, chosen to fit when the user sets none.

``serve`` (through :func:`plan`) and ``pull`` (through :func:`minimum_plan`, choosing a
quantization before the download) use this one estimate, so what ``pull`` chose ``serve`` can
plan. The estimate is checked against what llama.cpp reports allocating, in tests/test_planner.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma_local.gguf import ArrayInfo, read_gguf_metadata
from gemma_local.memory.machine import GIB, MachineMemory

if TYPE_CHECKING:
    from gemma_local.memory.split import SplitPlan

__all__ = ["MIN_USEFUL_CTX", "MemoryEstimate", "ModelShape", "Plan", "estimate", "minimum_plan", "plan"]

KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# Gemma 3: five sliding-window layers, then one global layer (llama.cpp "swa pattern 6").
GEMMA3_SWA_PATTERN = 6
DEFAULT_TARGET_CTX = 32768
CTX_CANDIDATES = (131072, 65536, 32768, 16384, 8192, 4096, 2048)
#: The context one slot must hold for a model to count as fitting a machine (``pull``'s test):
#: room for a real conversation; ``serve`` plans more slots and context where memory allows.
MIN_USEFUL_CTX = 8192
#: Sliding-window checkpoints per slot when memory allows (fewer, down to none, when it does not).
DEFAULT_CHECKPOINTS = 8
#: More, up to this many, while they take at most a quarter of the memory left over: with one
#: every window, an edit anywhere in the first ``MAX_CHECKPOINTS`` windows of a conversation
#: keeps all but less than a window of what precedes it (8 spread over a long prompt leave gaps
#: of an eighth of it).
MAX_CHECKPOINTS = 32


def pad256(n: int) -> int:
    return (n + 255) // 256 * 256


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model that memory depends on."""

    name: str
    architecture: str
    weights_bytes: int
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_swa: int
    swa_pattern: int
    n_ctx_train: int
    n_vocab: int
    file_type: str = ""

    @property
    def n_swa_layers(self) -> int:
        if not self.n_swa or not self.swa_pattern:
            return 0
        return sum(1 for il in range(self.n_layer) if il % self.swa_pattern < self.swa_pattern - 1)

    @property
    def n_global_layers(self) -> int:
        return self.n_layer - self.n_swa_layers

    @classmethod
    def from_gguf(cls, path: str | Path) -> ModelShape:
        path = Path(path)
        return cls.from_metadata(read_gguf_metadata(path), weights_bytes=path.stat().st_size)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], *, weights_bytes: int) -> ModelShape:
        arch = str(meta.get("general.architecture", "gemma3"))

        def get(key: str, default: Any = None) -> Any:
            value = meta.get(f"{arch}.{key}", default)
            return value[0] if isinstance(value, list) and value else value

        n_embd = int(get("embedding_length"))
        n_head = int(get("attention.head_count"))
        head_k = int(get("attention.key_length", n_embd // n_head))
        tokens = meta.get("tokenizer.ggml.tokens")
        n_vocab = tokens.length if isinstance(tokens, ArrayInfo) else len(tokens or []) or 262144
        return cls(
            name=str(meta.get("general.name", "")),
            architecture=arch,
            weights_bytes=weights_bytes,
            n_layer=int(get("block_count")),
            n_embd=n_embd,
            n_ff=int(get("feed_forward_length", 4 * n_embd)),
            n_head=n_head,
            n_head_kv=int(get("attention.head_count_kv", n_head)),
            head_dim_k=head_k,
            head_dim_v=int(get("attention.value_length", head_k)),
            n_swa=int(get("attention.sliding_window", 0) or 0),
            swa_pattern=GEMMA3_SWA_PATTERN if arch == "gemma3" else 0,
            n_ctx_train=int(get("context_length", 8192)),
            n_vocab=int(n_vocab),
            file_type=str(meta.get("general.file_type", "")),
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one configuration needs."""

    ctx: int
    parallel: int
    kv_type: str
    swa_full: bool
    flash_attn: bool
    weights: int
    kv_global: int
    kv_swa: int
    compute: int
    output: int
    projector: int = 0
    checkpoints: int = 0  # per slot
    checkpoint_bytes: int = 0  # one checkpoint
    #: A draft model (speculative decoding): its weights, KV for every slot, compute and output
    #: buffers, and one of its checkpoints (a draft sequence keeps as many as a slot).
    draft_weights: int = 0
    draft_kv: int = 0
    draft_compute: int = 0
    draft_checkpoint_bytes: int = 0

    @property
    def kv(self) -> int:
        return self.kv_global + self.kv_swa

    @property
    def checkpoints_total(self) -> int:
        return self.checkpoints * (self.checkpoint_bytes + self.draft_checkpoint_bytes) * self.parallel

    @property
    def draft(self) -> int:
        """The draft model's memory, its checkpoints aside (they are in ``checkpoints_total``)."""
        return self.draft_weights + self.draft_kv + self.draft_compute

    @property
    def total(self) -> int:
        return (
            self.weights + self.projector + self.kv + self.compute + self.output + self.checkpoints_total + self.draft
        )


def estimate(
    shape: ModelShape,
    *,
    ctx: int,
    parallel: int = 1,
    kv_type: str = "f16",
    swa_full: bool = False,
    flash_attn: bool = True,
    n_ubatch: int = 512,
    projector_bytes: int = 0,
    checkpoints: int = 0,
    draft_max: int = 0,
    draft: ModelShape | None = None,
) -> MemoryEstimate:
    """Memory for ``parallel`` slots of ``ctx`` tokens each (plus a vision projector's weights,
    ``checkpoints`` sliding-window checkpoints per slot, and a ``draft`` model loaded beside it
    with a sequence per slot of the same context, capped at what it was trained for)."""
    n_ctx = pad256(ctx)
    per_cell_layer = shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v) * KV_TYPE_BYTES[kv_type]
    swa_cells = pad256(min(n_ctx, shape.n_swa + n_ubatch))
    if swa_full or not shape.n_swa_layers:
        global_layers, swa_layers = shape.n_layer, 0
    else:
        global_layers, swa_layers = shape.n_global_layers, shape.n_swa_layers
    kv_global = int(per_cell_layer * n_ctx * global_layers) * parallel
    kv_swa = int(per_cell_layer * swa_cells * swa_layers) * parallel
    # Activations of one micro-batch (f32): residual stream, norms and attention projections
    # (~7 × n_embd) and the FFN's gate/up (2 × n_ff); calibrated on llama.cpp's own report.
    activations = n_ubatch * 4 * (7 * shape.n_embd + 2 * shape.n_ff)
    # f16 attention masks: one over the global cache and, with SWA layers, one over theirs.
    mask = n_ubatch * 2 * n_ctx
    if shape.n_swa_layers:
        mask += n_ubatch * 2 * (n_ctx if swa_full else swa_cells)
    scores = 0 if flash_attn else n_ubatch * n_ctx * shape.n_head * 4
    output = shape.n_vocab * 4 * parallel * (1 + draft_max)
    checkpoint_bytes = 0 if swa_full else int(per_cell_layer * min(shape.n_swa, n_ctx) * shape.n_swa_layers)
    side = None
    if draft is not None:
        side = estimate(
            draft,
            ctx=min(ctx, draft.n_ctx_train),
            parallel=parallel,
            kv_type=kv_type,
            swa_full=swa_full,
            flash_attn=flash_attn,
            n_ubatch=n_ubatch,
        )
    return MemoryEstimate(
        ctx=ctx,
        parallel=parallel,
        kv_type=kv_type,
        swa_full=swa_full,
        flash_attn=flash_attn,
        weights=shape.weights_bytes,
        kv_global=kv_global,
        kv_swa=kv_swa,
        # Draft rows of logits also widen the graph's output (measured: ~half a row each).
        compute=activations + mask + scores + shape.n_vocab * 4 + shape.n_vocab * 2 * parallel * draft_max,
        output=output,
        projector=projector_bytes,
        checkpoints=checkpoints if checkpoint_bytes else 0,
        checkpoint_bytes=checkpoint_bytes,
        draft_weights=side.weights if side else 0,
        draft_kv=side.kv if side else 0,
        draft_compute=side.compute + side.output if side else 0,
        draft_checkpoint_bytes=side.checkpoint_bytes if side and checkpoint_bytes else 0,
    )


@dataclass(frozen=True)
class Plan:
    """Defaults chosen to fit, and why."""

    ctx: int
    parallel: int
    kv_type: str
    gpu_layers: int
    estimate: MemoryEstimate
    budget: int
    fits: bool
    reasons: list[str] = field(default_factory=list)
    #: Where each layer goes over RPC workers and local GPUs (``--rpc``; None without).
    split: SplitPlan | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.split is not None:
            d["split"] = self.split.as_dict()
        d["estimate"]["total"] = self.estimate.total
        d["estimate"]["kv"] = self.estimate.kv
        d["estimate"]["checkpoints_total"] = self.estimate.checkpoints_total
        d["estimate"]["draft"] = self.estimate.draft
        return d


def plan(
    shape: ModelShape,
    machine: MachineMemory,
    *,
    ctx: int | None = None,
    parallel: int | None = None,
    kv_type: str | None = None,
    swa_full: bool = False,
    flash_attn: bool = True,
    n_ubatch: int = 512,
    projector_bytes: int = 0,
    checkpoints: int | None = None,
    draft_max: int = 0,
    draft: ModelShape | None = None,
) -> Plan:
    """Choose context, slots, KV type and GPU layers that fit, keeping anything the user fixed.

    Args:
        shape: the model (:meth:`ModelShape.from_gguf`).
        machine: what the machine has; a plan uses at most ``machine.budget``.
        ctx, parallel, kv_type: the user's choices (``None``: choose).
        swa_full, flash_attn, n_ubatch: how the context will be created.
        projector_bytes: the vision projector loaded beside the model (0 without).
        draft_max: draft tokens a slot may verify per step (speculative decoding; 0: off).
        draft: the draft model loaded beside it (draft-model speculation; None without).
        checkpoints: sliding-window checkpoints per slot (``None``: up to
            :data:`DEFAULT_CHECKPOINTS`, as many as fit beside the chosen configuration, and up to
            :data:`MAX_CHECKPOINTS` while they take at most a quarter of the memory left).

    Returns:
        The most slots (4, 2, 1), then the largest context, then f16 before q8_0 that fit;
        ``fits=False`` (with the smallest configuration) when nothing does.
    """
    reasons: list[str] = []
    budget = machine.budget
    vram = machine.vram_budget
    kv_types = [kv_type] if kv_type else (["f16", "q8_0"] if flash_attn else ["f16"])
    parallels = [parallel] if parallel else [4, 2, 1]
    target = min(shape.n_ctx_train, DEFAULT_TARGET_CTX)
    ctxs = [ctx] if ctx else [c for c in CTX_CANDIDATES if c <= target] or [min(shape.n_ctx_train, 2048)]

    def cost(p: int, c: int, kt: str) -> MemoryEstimate:
        return estimate(
            shape,
            ctx=c,
            parallel=p,
            kv_type=kt,
            swa_full=swa_full,
            flash_attn=flash_attn,
            n_ubatch=n_ubatch,
            projector_bytes=projector_bytes,
            checkpoints=checkpoints or 0,
            draft_max=draft_max,
            draft=draft,
        )

    def fits(e: MemoryEstimate) -> bool:
        if vram is not None and e.kv + e.compute > vram / 2:
            # The KV cache and compute buffers of offloaded layers live on the GPU: keep them
            # to half of what the GPUs may hold so the other half can hold weights.
            return False
        return e.total <= budget

    candidates = (cost(p, c, kt) for p in parallels for c in ctxs for kt in kv_types)
    chosen = next((e for e in candidates if fits(e)), None)
    ok = chosen is not None
    if chosen is None:
        chosen = cost(parallels[-1], ctxs[-1], kv_types[-1])
        reasons.append(
            f"Even {chosen.ctx} tokens × {chosen.parallel} slot(s) needs {chosen.total / GIB:.1f} GiB but only "
            f"{budget / GIB:.1f} GiB is usable ({machine.describe_budget()}): pick a smaller quantization or context."
        )
    else:
        reasons.append(
            f"{chosen.parallel} slot(s) × {chosen.ctx} tokens with a {chosen.kv_type} KV cache need "
            f"{chosen.total / GIB:.2f} GiB of the {budget / GIB:.1f} GiB usable ({machine.describe_budget()})."
        )
        if not ctx and chosen.ctx < target:
            reasons.append(f"Context reduced from {target} to {chosen.ctx} tokens to fit.")
        if not kv_type and chosen.kv_type != "f16":
            reasons.append("KV cache quantized to q8_0 to fit.")
        if chosen.draft:
            reasons.append(
                f"Draft model {draft.name or 'for speculative decoding'}: {chosen.draft / GIB:.2f} GiB (weights "
                f"{chosen.draft_weights / GIB:.2f}, KV {chosen.draft_kv / GIB:.2f} for {chosen.parallel} slot(s), "
                f"compute {chosen.draft_compute / GIB:.2f})."
            )
        if checkpoints is None and chosen.checkpoint_bytes:
            each = (chosen.checkpoint_bytes + chosen.draft_checkpoint_bytes) * chosen.parallel
            spare = max(0, budget - chosen.total)
            count = max(min(DEFAULT_CHECKPOINTS, spare // each), min(MAX_CHECKPOINTS, spare // 4 // each))
            chosen = replace(chosen, checkpoints=int(count))
        if chosen.checkpoints_total:
            reasons.append(
                f"{chosen.checkpoints} sliding-window checkpoints per slot "
                f"({(chosen.checkpoint_bytes + chosen.draft_checkpoint_bytes) / 2**20:.0f} MiB each, "
                f"{chosen.checkpoints_total / GIB:.2f} GiB in all) "
                "let prompts edited far back reuse the cache."
            )
    gpu_layers = 0
    if machine.gpu_backend:
        if vram is None:
            # Metal's unified memory (or a GPU whose memory nvidia-smi cannot tell): offload
            # everything, as llama.cpp itself would.
            gpu_layers = shape.n_layer + 1
        else:
            usable = vram - chosen.kv - chosen.compute - chosen.projector - chosen.draft
            per_layer = shape.weights_bytes / (shape.n_layer + 1)
            gpu_layers = max(0, min(shape.n_layer + 1, int(usable // per_layer)))
            reasons.append(
                f"{gpu_layers} of {shape.n_layer + 1} layers fit in {vram / GIB:.1f} GiB of VRAM "
                f"({len(machine.gpus)} GPU{'s' if len(machine.gpus) > 1 else ''})."
            )
    return Plan(
        ctx=chosen.ctx,
        parallel=chosen.parallel,
        kv_type=chosen.kv_type,
        gpu_layers=gpu_layers,
        estimate=chosen,
        budget=budget,
        fits=ok,
        reasons=reasons,
    )


def minimum_plan(shape: ModelShape, machine: MachineMemory, *, projector_bytes: int = 0) -> Plan:
    """The least worth serving: one slot of :data:`MIN_USEFUL_CTX` tokens (or the trained context).

    ``pull`` takes a quantization only when this plan fits; :func:`plan`, which ``serve`` runs
    with the same shape and machine, then fits too (it tries this configuration among others).
    Checkpoints count as the default few where they fit, not the extra ones spare memory buys,
    so what it needs does not grow with the machine.
    """
    ctx = min(MIN_USEFUL_CTX, shape.n_ctx_train)
    chosen = plan(shape, machine, ctx=ctx, parallel=1, projector_bytes=projector_bytes)
    if chosen.estimate.checkpoints > DEFAULT_CHECKPOINTS:
        chosen = plan(
            shape, machine, ctx=ctx, parallel=1, projector_bytes=projector_bytes, checkpoints=DEFAULT_CHECKPOINTS
        )
    return chosen
