"""How ``serve`` without ``--model`` plans and loads each model of the store on demand.

Every model is planned against the memory measured once at start (or ``--max-memory-gib``),
with the engine flags the server was started with (``--ctx``, ``--parallel``, ``--kv-type``,
…); so a model's plan, and the memory the manager counts for it, never depends on what
happens to be loaded when it is asked for. ``--mmproj`` does not apply: each model loads the
projector stored with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gemma_local.cli_support import open_engine, plan_for
from gemma_local.serving import LoadPlan, ModelEntry
from gemma_local.settings import EngineSettings

if TYPE_CHECKING:
    from gemma_local.memory import MachineMemory
    from gemma_local.pipeline import EngineLike

__all__ = ["StoreLoader"]


class StoreLoader:
    """A :class:`~gemma_local.serving.ModelLoader` built on the memory planner and ``open_engine``.

    Args:
        settings: the engine flags and env vars (``model`` and ``mmproj`` are ignored).
        machine: the memory to plan for (default: this machine, measured now).
        max_memory_bytes: a cap on what the loaded models take together (default: the plan budget).
        ctx_for: a context per model id, overriding ``settings.ctx`` (tests serve one file at two).
    """

    def __init__(
        self,
        settings: EngineSettings,
        *,
        machine: MachineMemory | None = None,
        max_memory_bytes: int | None = None,
        ctx_for: Mapping[str, int] | None = None,
    ) -> None:
        from gemma_local.memory import MachineMemory

        self.settings = settings.model_copy(update={"model": None, "mmproj": None})
        measured = machine or MachineMemory.detect()
        # Planned within the cap, so a model gets the context that fits the cap rather than a
        # plan for the whole machine that the cap then refuses.
        self.machine = _capped(measured, max_memory_bytes) if max_memory_bytes else measured
        budget = self.machine.budget
        self.budget_bytes = min(budget, max_memory_bytes) if max_memory_bytes else budget
        self.ctx_for = dict(ctx_for or {})

    def _settings(self, entry: ModelEntry) -> EngineSettings:
        # By path, not name: the catalog already found the files (in the store it was built from).
        update: dict[str, object] = {"model": str(entry.path), "mmproj": str(entry.mmproj) if entry.mmproj else None}
        if entry.id in self.ctx_for:
            update["ctx"] = self.ctx_for[entry.id]
        return self.settings.model_copy(update=update)

    def plan(self, entry: ModelEntry) -> LoadPlan:
        chosen = plan_for(self._settings(entry), entry.path, mmproj_path=entry.mmproj, machine=self.machine)
        detail = " ".join(chosen.reasons)
        return LoadPlan(chosen.estimate.total, chosen.ctx, chosen.parallel, detail)

    def load(self, entry: ModelEntry, plan: LoadPlan) -> EngineLike:
        # Planned again against the same machine and flags: the same plan the manager counted.
        engine = open_engine(self._settings(entry), machine=self.machine)
        engine.model_id = entry.id  # loaded by path; it answers to its catalog id
        return engine


def _capped(machine: MachineMemory, limit: int) -> MachineMemory:
    """``machine`` with its RAM and free VRAM scaled down so that its plan budget is ``limit``."""
    from dataclasses import replace

    from gemma_local.memory import GpuMemory

    if machine.budget <= limit:
        return machine
    factor = limit / machine.budget
    return replace(
        machine,
        total_ram=int(machine.total_ram * factor),
        available_ram=int(machine.available_ram * factor),
        gpus=tuple(GpuMemory(total=g.total, free=int(g.free * factor)) for g in machine.gpus),
    )
