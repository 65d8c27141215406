"""Splitting a model's layers over devices: RPC workers (other machines) and local GPUs.

llama.cpp's loader does the splitting; this module predicts it, layer by layer, so that a
plan can be checked against every device's free memory *before* weights are sent over the
network, and so ``gemma-local info --rpc`` can show where each byte goes. Its rules
(``llama_model::load_tensors``):

- the token embeddings (the input layer) always stay on this machine's CPU;
- the last ``gpu_layers`` of the ``n_layer + 1`` layers (the output head counts as one)
  are offloaded, the rest stay on the CPU;
- offloaded layer ``i`` (counted from the first offloaded one) goes to the first device whose
  cumulative share of ``tensor_split`` exceeds ``i / gpu_layers``;
- a layer's KV cache lives with the layer; every device that holds a layer gets a compute
  buffer; Gemma 3's output head is a *copy* of the token embeddings (tied weights) on the
  device of the last layer, which is why that device needs far more than the others.

The planner chooses the shares by each device's usable memory (what llama.cpp's default
does with free memory), then offloads as many layers as fit; ``--tensor-split`` fixes the
shares instead.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gemma_local.gguf import tensor_sizes
from gemma_local.memory.machine import GIB, HEADROOM, VRAM_SHARE
from gemma_local.memory.planner import MemoryEstimate, ModelShape

__all__ = ["DeviceShare", "LayerWeights", "SplitDevice", "SplitPlan", "parse_tensor_split", "plan_split"]


@dataclass(frozen=True)
class LayerWeights:
    """Bytes of weights per layer, read from the GGUF's tensor table."""

    blocks: tuple[int, ...]
    input: int
    output: int

    @classmethod
    def from_gguf(cls, path: str | Path) -> LayerWeights:
        sizes = tensor_sizes(path)
        n = 1 + max((int(name.split(".")[1]) for name in sizes if name.startswith("blk.")), default=-1)
        blocks = [0] * n
        for name, size in sizes.items():
            if name.startswith("blk."):
                blocks[int(name.split(".")[1])] += size
        embd = sizes.get("token_embd.weight", 0)
        # No output.weight: the head is tied to the embeddings and llama.cpp loads a second copy.
        head = sizes.get("output.weight", embd) + sizes.get("output_norm.weight", 0)
        return cls(tuple(blocks), embd, head)


@dataclass(frozen=True)
class SplitDevice:
    """A device layers can go to: an RPC worker's or a local GPU."""

    name: str  # llama.cpp's buffer name, e.g. "RPC0[10.0.0.2:50052]" or "CUDA0"
    where: str  # "10.0.0.2:50052" or "this machine"
    free: int
    total: int
    share: float = HEADROOM  # of free memory a plan may use

    @property
    def budget(self) -> int:
        return int(self.free * self.share)


@dataclass(frozen=True)
class DeviceShare:
    """What one device (or this machine's CPU) holds under a split."""

    name: str
    where: str
    layers: tuple[int, ...]
    weights: int
    kv: int
    compute: int
    budget: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute

    @property
    def fits(self) -> bool:
        return self.total <= self.budget


@dataclass(frozen=True)
class SplitPlan:
    """Layers offloaded, the shares llama.cpp is given, and each device's bytes."""

    gpu_layers: int
    tensor_split: tuple[float, ...]
    devices: tuple[DeviceShare, ...]  # this machine's CPU first, then the offload devices
    fits: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, share in zip(d["devices"], self.devices, strict=True):
            row["total"] = share.total
            row["fits"] = share.fits
        return d


def parse_tensor_split(text: str | None, n_devices: int) -> tuple[float, ...] | None:
    """``"3,1"`` → ``(3.0, 1.0)``; ``None`` when not given.

    Raises:
        ValueError: not numbers, negative, all zero, or more than there are devices.
    """
    if not text or not text.strip():
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--tensor-split takes numbers separated by commas, not {text!r}.") from None
    if any(v < 0 for v in values) or not any(values):
        raise ValueError("--tensor-split needs non-negative shares, at least one above zero.")
    if len(values) > n_devices:
        raise ValueError(f"--tensor-split gives {len(values)} shares for {n_devices} device(s).")
    return values + (0.0,) * (n_devices - len(values))


def _kv_per_layer(shape: ModelShape, est: MemoryEstimate) -> list[int]:
    n_global, n_swa = shape.n_global_layers, shape.n_swa_layers
    if est.swa_full or not n_swa:
        return [est.kv // shape.n_layer] * shape.n_layer
    pattern = shape.swa_pattern
    # Gemma 3: every sixth layer (il % 6 == 5) attends globally, the others over the window.
    return [
        est.kv_global // n_global if (il % pattern == pattern - 1) else est.kv_swa // n_swa
        for il in range(shape.n_layer)
    ]


def _assign(n_layer: int, gpu_layers: int, shares: Sequence[float]) -> list[int]:
    """The device index of each of the ``n_layer + 1`` layers (-1: this machine's CPU)."""
    total = sum(shares)
    cumulative = []
    running = 0.0
    for s in shares:
        running += s
        cumulative.append(running / total)
    start = n_layer + 1 - gpu_layers
    return [
        -1 if il < start else min(bisect.bisect_right(cumulative, (il - start) / gpu_layers), len(shares) - 1)
        for il in range(n_layer + 1)
    ]


def plan_split(
    weights: LayerWeights,
    shape: ModelShape,
    est: MemoryEstimate,
    devices: Sequence[SplitDevice],
    *,
    cpu_budget: int,
    shares: Sequence[float] | None = None,
    gpu_layers: int | None = None,
) -> SplitPlan:
    """Offload as many layers as the devices hold, in proportion to ``shares`` (default: budgets).

    Args:
        weights: per-layer bytes (:meth:`LayerWeights.from_gguf`).
        shape, est: the model and the context's estimate (KV per layer, compute buffers).
        devices: the offload devices, in llama.cpp's order (RPC workers first, then local GPUs).
        cpu_budget: bytes this machine's RAM may hold (input layer, layers not offloaded).
        shares: ``--tensor-split``; ``None`` splits by each device's budget.
        gpu_layers: the user's ``--gpu-layers`` (``None``: the most that fit).
    """
    n = len(weights.blocks)
    kv = [*_kv_per_layer(shape, est), 0]
    layer_bytes = [*weights.blocks, weights.output]
    if not devices:
        shares_used: tuple[float, ...] = ()
    else:
        shares_used = tuple(shares) if shares else tuple(float(max(d.budget, 1)) for d in devices)
    usable = [i for i, s in enumerate(shares_used) if s > 0]
    if not usable:
        candidates = [0]
    elif gpu_layers is not None:  # the user's count (-1: all), checked but not changed
        candidates = [n + 1 if gpu_layers < 0 else min(gpu_layers, n + 1)]
    else:
        candidates = list(range(n + 1, -1, -1))
    best: tuple[DeviceShare, ...] = ()
    chosen = candidates[-1]
    for count in candidates:
        where = _assign(n, count, shares_used) if count else [-1] * (n + 1)
        rows = []
        for index in (-1, *range(len(devices))):
            mine = tuple(il for il in range(n + 1) if where[il] == index)
            w = sum(layer_bytes[il] for il in mine) + (weights.input if index == -1 else 0)
            k = sum(kv[il] for il in mine)
            compute = est.compute + est.output if index == -1 else (est.compute if mine else 0)
            if index == -1:
                rows.append(DeviceShare("CPU", "this machine", mine, w, k, compute, cpu_budget))
            else:
                d = devices[index]
                rows.append(DeviceShare(d.name, d.where, mine, w, k, compute, d.budget))
        best, chosen = tuple(rows), count
        if all(r.fits for r in rows):
            break
    fits = all(r.fits for r in best)
    reasons = [
        f"{chosen} of {n + 1} layers offloaded to {len(devices)} device(s)"
        + (f" in shares {','.join(f'{s:g}' for s in shares_used)}" if shares else " in proportion to their free memory")
        + "."
    ]
    for r in best:
        if not r.fits:
            reasons.append(
                f"{r.name} ({r.where}) needs {r.total / GIB:.2f} GiB but may use {r.budget / GIB:.2f} GiB: "
                "add a worker, use a smaller quantization or context, or change --tensor-split."
            )
    return SplitPlan(chosen, shares_used, best, fits, reasons)


def local_gpu_devices(gpus: Sequence[Any]) -> list[SplitDevice]:
    """This machine's discrete GPUs (``MachineMemory.gpus``) as devices after the RPC ones."""
    return [SplitDevice(f"GPU{i}", "this machine", g.free, g.total, VRAM_SHARE) for i, g in enumerate(gpus)]
