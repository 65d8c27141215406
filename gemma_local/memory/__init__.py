"""The one memory model: what this machine has, and what a model will cost on it.

    machine.py   MachineMemory: RAM, VRAM per GPU, Metal's cap, how much a plan may use
    planner.py   ModelShape, estimate(), plan(), minimum_plan(): llama.cpp's allocations

Both ``hub`` (``pull`` choosing a quantization) and the CLI (``serve``, ``info`` planning a
context) use it; it imports nothing of gemma-local but the GGUF header reader.
"""

from gemma_local.memory.machine import GIB, MIB, GpuMemory, MachineMemory
from gemma_local.memory.planner import (
    MIN_USEFUL_CTX,
    MemoryEstimate,
    ModelShape,
    Plan,
    estimate,
    minimum_plan,
    plan,
)

__all__ = [
    "GIB",
    "MIB",
    "MIN_USEFUL_CTX",
    "GpuMemory",
    "MachineMemory",
    "MemoryEstimate",
    "ModelShape",
    "Plan",
    "estimate",
    "minimum_plan",
    "plan",
]
