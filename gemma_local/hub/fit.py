"""Will a model fit this machine? The conservative rule ``pull`` uses to choose a quantization.

Rule: weights (+ vision projector) × 1.2, plus the model's context reserve (a few GiB for the KV
cache and compute buffers, from the catalog), must fit in the memory that is available now:
free VRAM when llama.cpp has a GPU backend and ``nvidia-smi`` reports it, otherwise available
RAM (on Apple Silicon, at most the ~75% of RAM that Metal lets one process wire).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass

import psutil

from gemma_local.errors import InsufficientMemoryError

__all__ = ["MemoryBudget", "QuantChoice", "choose_quant", "detect_memory", "required_bytes"]

GIB = 2**30
WEIGHT_OVERHEAD = 1.2  # runtime copies, alignment, output buffers: measured loads stay under +20%
_METAL_WORKING_SET = 0.75  # recommendedMaxWorkingSetSize is ~2/3-3/4 of RAM on Apple Silicon


@dataclass(frozen=True)
class MemoryBudget:
    """How much memory a model may use here, and where the number came from."""

    available_bytes: int
    source: str  # e.g. "available RAM", "free VRAM on 1 NVIDIA GPU", "--memory-gib"

    def describe(self) -> str:
        return f"{self.available_bytes / GIB:.1f} GiB of {self.source}"


def required_bytes(weights_bytes: int, context_reserve_gib: float) -> int:
    """Memory needed to load ``weights_bytes`` of GGUF and still hold a useful context."""
    return int(weights_bytes * WEIGHT_OVERHEAD + context_reserve_gib * GIB)


def detect_memory() -> MemoryBudget:
    """Measure this machine: free VRAM with a GPU backend, else available RAM."""
    vram = _nvidia_free_vram() if _llama_has_gpu_offload() else None
    if vram is not None:
        free, count = vram
        return MemoryBudget(free, f"free VRAM on {count} NVIDIA GPU{'s' if count > 1 else ''}")
    ram = psutil.virtual_memory()
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        usable = min(ram.available, int(ram.total * _METAL_WORKING_SET))
        return MemoryBudget(usable, "unified memory available to Metal")
    return MemoryBudget(ram.available, "available RAM")


def _llama_has_gpu_offload() -> bool:
    try:
        import llama_cpp
    except ImportError:
        return False
    try:
        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # an old or broken build: assume CPU, the conservative answer
        return False


def _nvidia_free_vram() -> tuple[int, int] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        mib = [int(line) for line in out.split() if line.strip().isdigit()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not mib:
        return None
    # llama.cpp splits layers across GPUs, so their free memory adds up.
    return sum(mib) * 2**20, len(mib)


@dataclass(frozen=True)
class QuantChoice:
    """What was chosen, how much it needs, and a sentence saying why."""

    quant: str
    required_bytes: int
    budget: MemoryBudget
    reason: str
    fits: bool


def choose_quant(
    candidates: list[tuple[str, int]], *, context_reserve_gib: float, budget: MemoryBudget, model: str
) -> QuantChoice:
    """Pick the best quantization that fits ``budget``.

    Args:
        candidates: ``(quant, weights_bytes)`` pairs, best quality first.
        context_reserve_gib: memory kept for the KV cache (from the catalog).
        budget: what this machine has (``detect_memory()``).
        model: catalog model name, for messages.

    Raises:
        InsufficientMemoryError: not even the smallest candidate fits.
    """
    if not candidates:
        raise ValueError("no candidates")
    for index, (quant, weights) in enumerate(candidates):
        need = required_bytes(weights, context_reserve_gib)
        if need <= budget.available_bytes:
            better = candidates[:index]
            why = f"best quality that fits {budget.describe()} (needs ≈{need / GIB:.1f} GiB with room for context)"
            if better:
                above, above_weights = better[-1]
                above_need = required_bytes(above_weights, context_reserve_gib)
                why += f"; {above} would need ≈{above_need / GIB:.1f} GiB"
            return QuantChoice(quant, need, budget, why, fits=True)
    smallest, weights = min(candidates, key=lambda c: c[1])
    raise InsufficientMemoryError(
        model,
        required=required_bytes(weights, context_reserve_gib),
        available=budget.available_bytes,
        smallest=f"{model}:{smallest}",
    )


def check_fit(quant_name: str, weights_bytes: int, *, context_reserve_gib: float, budget: MemoryBudget) -> str | None:
    """A warning when a quantization the user forced will not fit, else ``None``."""
    need = required_bytes(weights_bytes, context_reserve_gib)
    if need <= budget.available_bytes:
        return None
    return (
        f"{quant_name} needs ≈{need / GIB:.1f} GiB of memory with room for a context, but this machine has "
        f"{budget.describe()}; it may swap heavily or fail to load. Downloading anyway as asked."
    )
