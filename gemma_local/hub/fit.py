"""Will a model fit this machine? How ``pull`` chooses a quantization, with the planner ``serve`` uses.

A quantization fits when the memory planner (:func:`gemma_local.memory.minimum_plan`) can run
one slot of 8192 tokens with it: weights + vision projector + KV cache + compute buffers within
what the machine lets a plan use (:class:`gemma_local.memory.MachineMemory`: 85% of available
RAM, Metal's cap on Apple silicon, plus 90% of free VRAM over every NVIDIA GPU). ``serve`` runs
the same planner on the same machine, so what ``pull`` chose it can always plan, with more
slots or context where memory allows.

Before the download the model's shape comes from the catalog (the published architecture) and
the weights' size from the Hub; after it, ``serve`` reads the same numbers from the GGUF header.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gemma_local.errors import InsufficientMemoryError
from gemma_local.memory import GIB, MachineMemory, ModelShape, Plan, minimum_plan

__all__ = ["Candidate", "QuantChoice", "candidate", "check_fit", "choose_quant"]


@dataclass(frozen=True)
class Candidate:
    """One quantization to consider: its shape (weights size included) and projector size."""

    quant: str
    shape: ModelShape
    projector_bytes: int = 0

    def plan(self, machine: MachineMemory) -> Plan:
        return minimum_plan(self.shape, machine, projector_bytes=self.projector_bytes)


def candidate(quant: str, base: ModelShape, weights_bytes: int, projector_bytes: int = 0) -> Candidate:
    """A :class:`Candidate` from a model's shape and one quantization's file sizes."""
    return Candidate(quant, replace(base, weights_bytes=weights_bytes), projector_bytes)


@dataclass(frozen=True)
class QuantChoice:
    """What was chosen, what the planner says it needs, and a sentence saying why."""

    quant: str
    required_bytes: int
    machine: MachineMemory
    reason: str
    fits: bool


def _needs(plan: Plan) -> str:
    return f"≈{plan.estimate.total / GIB:.1f} GiB for {plan.parallel} slot of {plan.ctx} tokens"


def choose_quant(candidates: list[Candidate], *, machine: MachineMemory, model: str) -> QuantChoice:
    """Pick the best quantization the planner can fit on ``machine``.

    Args:
        candidates: best quality first.
        machine: what to plan for (``MachineMemory.detect()``, or one ``--memory-gib`` describes).
        model: catalog model name, for messages.

    Raises:
        InsufficientMemoryError: not even the smallest candidate fits.
    """
    if not candidates:
        raise ValueError("no candidates")
    plans = []
    for c in candidates:
        p = c.plan(machine)
        if p.fits:
            why = f"best quality that fits {machine.describe_budget()} (needs {_needs(p)})"
            if plans:
                above, above_plan = plans[-1]
                why += f"; {above.quant} would need {_needs(above_plan)}"
            return QuantChoice(c.quant, p.estimate.total, machine, why, fits=True)
        plans.append((c, p))
    smallest, smallest_plan = min(plans, key=lambda cp: cp[1].estimate.total)
    raise InsufficientMemoryError(
        model,
        required=smallest_plan.estimate.total,
        available=machine.budget,
        smallest=f"{model}:{smallest.quant}",
    )


def check_fit(name: str, c: Candidate, *, machine: MachineMemory) -> str | None:
    """A warning when a quantization the user named will not fit, else ``None``."""
    p = c.plan(machine)
    if p.fits:
        return None
    return (
        f"{name} needs {_needs(p)}, but a plan may use {machine.budget / GIB:.1f} GiB here "
        f"({machine.describe_budget()}); it may swap heavily or fail to load. Downloading anyway as asked."
    )
