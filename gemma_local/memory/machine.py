"""What memory this machine has, and how much of it a memory plan may use.

``pull`` (which quantization fits?) and ``serve`` (which context, slots and GPU layers?) both
read this one model, so a quantization ``pull`` picks is one ``serve`` can plan. The rules,
decided once:

- **RAM**: what the OS reports *available* now, never the total: other programs keep theirs.
- **NVIDIA GPUs** (a llama.cpp build with GPU offload and ``nvidia-smi`` answering): the free
  memory of *every* GPU counts, summed. llama.cpp's default split mode spreads the layers (and
  their KV cache) over all visible GPUs in proportion to their memory, so two 24 GiB cards hold
  what one 48 GiB card would. Counting only the first GPU would make ``pull`` refuse, and
  ``serve`` under-offload, a model the machine runs.
- **Apple silicon (Metal)**: the GPU shares RAM, and Metal lets one process wire only its
  "recommended working set", about 75% of RAM. Usable memory is the smaller of that cap and
  available RAM; there is no separate VRAM.
- **A plan may use** :data:`HEADROOM` (85%) of usable RAM plus :data:`VRAM_SHARE` (90%) of free
  VRAM. The rest covers what the estimate leaves out: driver contexts, fragmentation, the OS
  file cache the memory-mapped weights compete with.

Detection never fails: without a loadable llama.cpp or ``nvidia-smi`` the machine is planned as
CPU-only (the conservative answer), so ``gemma-local info`` works on a bare box.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["GIB", "HEADROOM", "METAL_WORKING_SET", "MIB", "VRAM_SHARE", "GpuMemory", "MachineMemory"]

MIB = 2**20
GIB = 2**30
HEADROOM = 0.85  # share of usable RAM a plan may take
VRAM_SHARE = 0.9  # share of free VRAM a plan may take (the CUDA context and cuBLAS live in the rest)
METAL_WORKING_SET = 0.75  # recommendedMaxWorkingSetSize is about 3/4 of RAM on Apple silicon


@dataclass(frozen=True)
class GpuMemory:
    """One discrete GPU's memory, in bytes."""

    total: int
    free: int


@dataclass(frozen=True)
class MachineMemory:
    """RAM and GPU memory of one machine (measured by :meth:`detect`, or given for planning).

    Attributes:
        total_ram: physical RAM.
        available_ram: RAM free for a new process now.
        gpu_backend: llama.cpp was built with GPU offload (CUDA, Metal, Vulkan, …).
        gpus: discrete GPUs whose memory is known (``nvidia-smi``); empty otherwise.
        unified: Apple silicon, where Metal shares RAM (capped at :data:`METAL_WORKING_SET`).
        ram_source: what ``available_ram`` is, for messages.
    """

    total_ram: int
    available_ram: int
    gpu_backend: bool = False
    gpus: tuple[GpuMemory, ...] = ()
    unified: bool = False
    ram_source: str = "available RAM"
    #: RPC workers' devices (``--rpc``): other machines' memory the plan may also use.
    workers: tuple[GpuMemory, ...] = ()

    @classmethod
    def detect(cls) -> MachineMemory:
        """Measure this machine now."""
        vm = psutil.virtual_memory()
        gpu = _gpu_offload_supported()
        apple = platform.system() == "Darwin" and platform.machine() == "arm64"
        return cls(
            total_ram=vm.total,
            available_ram=vm.available,
            gpu_backend=gpu,
            gpus=_nvidia_gpus() if gpu and not apple else (),
            unified=apple,
        )

    @classmethod
    def assume(cls, free_bytes: int, source: str) -> MachineMemory:
        """A CPU-only machine with ``free_bytes`` of free memory (``pull --memory-gib``)."""
        return cls(total_ram=free_bytes, available_ram=free_bytes, ram_source=source)

    @property
    def vram_total(self) -> int | None:
        """Memory of all discrete GPUs together, or ``None`` without any."""
        return sum(g.total for g in self.gpus) if self.gpus else None

    @property
    def vram_free(self) -> int | None:
        """Free memory of all discrete GPUs together, or ``None`` without any."""
        return sum(g.free for g in self.gpus) if self.gpus else None

    @property
    def usable_ram(self) -> int:
        """Available RAM, capped by Metal's working set where the GPU shares it."""
        if self.unified and self.gpu_backend:
            return min(self.available_ram, int(self.total_ram * METAL_WORKING_SET))
        return self.available_ram

    @property
    def ram_budget(self) -> int:
        """Bytes of RAM a plan may use."""
        return int(self.usable_ram * HEADROOM)

    @property
    def vram_budget(self) -> int | None:
        """Bytes of discrete-GPU memory a plan may use; ``None`` when there is none to plan for."""
        if not self.gpu_backend or self.vram_free is None:
            return None
        return int(self.vram_free * VRAM_SHARE)

    @property
    def workers_budget(self) -> int:
        """Bytes of the RPC workers' memory a plan may use (the same share as of local RAM)."""
        return sum(int(w.free * HEADROOM) for w in self.workers)

    @property
    def budget(self) -> int:
        """Everything a plan may use: RAM plus VRAM budgets, plus the RPC workers'."""
        return self.ram_budget + (self.vram_budget or 0) + self.workers_budget

    def describe_budget(self) -> str:
        """Where :attr:`budget` comes from, e.g. ``"85% of 20.0 GiB of available RAM"``."""
        if self.unified and self.gpu_backend:
            ram = f"{HEADROOM:.0%} of {self.usable_ram / GIB:.1f} GiB of unified memory available to Metal"
        else:
            ram = f"{HEADROOM:.0%} of {self.usable_ram / GIB:.1f} GiB of {self.ram_source}"
        if self.workers:
            free = sum(w.free for w in self.workers) / GIB
            ram += f" + {HEADROOM:.0%} of {free:.1f} GiB free on {len(self.workers)} RPC worker device(s)"
        if self.vram_budget is None:
            return ram
        count = len(self.gpus)
        return (
            f"{ram} + {VRAM_SHARE:.0%} of {(self.vram_free or 0) / GIB:.1f} GiB of free VRAM "
            f"on {count} GPU{'s' if count > 1 else ''}"
        )


def _gpu_offload_supported() -> bool:
    try:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            return False
        if not llama_cpp.llama_supports_rpc():
            return True
        # An RPC build says it can offload on any machine (to workers): look for a local GPU.
        return _local_gpu_device(Path(llama_cpp.__file__).parent / "lib")
    except Exception:  # an old, broken or missing build: plan for the CPU, the conservative answer
        return False


def _local_gpu_device(lib: Path) -> bool:
    name = next(
        (
            n
            for n in ("libggml.so.0", "libggml.0.dylib", "libggml.so", "libggml.dylib", "ggml.dll")
            if (lib / n).exists()
        ),
        None,
    )  # libllama's own copy first, as engine.rpc explains
    if name is None:
        return False
    ggml = ctypes.CDLL(str(lib / name))
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_name.restype = ctypes.c_char_p
    ggml.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        # 1: GPU, 2: integrated GPU (enum ggml_backend_dev_type); RPC devices say GPU too.
        if ggml.ggml_backend_dev_type(dev) in (1, 2) and not ggml.ggml_backend_dev_name(dev).startswith(b"RPC"):
            return True
    return False


def _nvidia_gpus() -> tuple[GpuMemory, ...]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return tuple(_parse_gpu_line(line) for line in out.splitlines() if line.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return ()


def _parse_gpu_line(line: str) -> GpuMemory:
    total, free = (int(x.strip()) * MIB for x in line.split(","))
    return GpuMemory(total=total, free=free)
