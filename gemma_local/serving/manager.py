"""Load models on demand, keep them while they are used, unload them when idle or short of memory.

The manager owns one :class:`~gemma_local.pipeline.Pipeline` per loaded engine. A request
takes a :class:`Lease` on the model it names (:meth:`ModelManager.acquire`) and gives it back
when its generation is over; a model with a lease is *busy* and is never unloaded or evicted.

The rules, and why:

- **One load per model**, however many requests ask at once: the first starts the load as a
  task; the others await the same task. A waiter gives up after ``load_wait_s`` with a 503
  and ``Retry-After`` (the load goes on: a retry finds the model loaded). Loading happens on a
  worker thread, so other models keep serving meanwhile.
- **Memory**: each model's need is its memory plan (the planner's estimate, decided before
  loading). A load that would take the loaded models past the budget first unloads the least
  recently used *idle* ones; if busy ones hold the memory, the request gets 503 with
  ``Retry-After`` instead of waiting unbounded; a model that needs more than the whole budget
  is a 400 that says how much it needs and how much there is. ``max_loaded`` caps the count
  the same way. The decision is taken under one lock, so two loads never count the same free
  memory twice.
- **Keep-alive**: a model idle for its keep-alive (the last request's ``keep_alive``, else the
  server's) is unloaded by :meth:`ModelManager.sweep`, which the server runs every fraction of
  a second; ``0`` unloads after each request, :data:`FOREVER` never.
- **Pinned** models (``serve --model X``, or an engine the app was built around) are never
  unloaded: one-model serving behaves as it always did.

All state changes on the event loop, so the only locks are the asyncio ones above; engines
are loaded and closed on worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio.to_thread

from gemma_local.errors import GemmaLocalError, InvalidRequestError, ModelNotReadyError, ModelTooLargeError
from gemma_local.memory import GIB
from gemma_local.pipeline import EngineLike, Pipeline
from gemma_local.pipeline.model_ids import ServedModels
from gemma_local.serving.catalog import ModelCatalog, ModelEntry, Resolution
from gemma_local.serving.keep_alive import FOREVER

__all__ = ["Lease", "LoadPlan", "LoadedModel", "ModelLoader", "ModelManager", "ModelState"]

logger = logging.getLogger("gemma_local.serving")

#: How long closing the manager waits for loads in progress.
LOAD_CLOSE_WAIT_S = 60.0


@dataclass(frozen=True)
class LoadPlan:
    """What loading a model will take: its memory and context, decided before loading.

    Attributes:
        memory_bytes: the memory planner's estimate (weights, KV cache, buffers, projector).
        ctx: context tokens per slot.
        parallel: slots.
        detail: how the plan was chosen, for the log.
    """

    memory_bytes: int
    ctx: int
    parallel: int
    detail: str = ""


class ModelLoader(Protocol):
    """Plans and loads engines for the manager (``serve`` gives one built on the memory planner)."""

    #: Bytes all loaded models may use together.
    budget_bytes: int

    def plan(self, entry: ModelEntry) -> LoadPlan:
        """The memory and context ``entry`` will take (reads its header; fast, any thread).

        Raises:
            GemmaLocalError: the file cannot be read.
        """
        ...

    def load(self, entry: ModelEntry, plan: LoadPlan) -> EngineLike:
        """Load ``entry`` as planned (slow; called on a worker thread).

        Raises:
            GemmaLocalError: it failed to load.
        """
        ...


@dataclass
class LoadedModel:
    """One loaded engine, its pipeline, and how long it stays."""

    entry: ModelEntry
    engine: EngineLike
    pipeline: Pipeline
    memory_bytes: int
    pinned: bool = False
    keep_alive_s: float = FOREVER
    leases: int = 0
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def busy(self) -> bool:
        return self.leases > 0

    def expires_in(self, now: float | None = None) -> float | None:
        """Seconds until keep-alive unloads it (0: due), or ``None``: never, or busy now."""
        if self.pinned or self.busy or math.isinf(self.keep_alive_s):
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, self.last_used + self.keep_alive_s - now)


@dataclass(frozen=True)
class ModelState:
    """One model as ``/v1/models`` and ``gemma-local ps`` show it."""

    entry: ModelEntry
    ids: list[str]
    loaded: bool
    loading: bool
    context_length: int | None
    memory_bytes: int | None
    slots: int | None = None
    active: int | None = None
    queued: int | None = None
    expires_in_s: float | None = None
    pinned: bool = False
    loaded_at: float | None = None


class Lease:
    """A request's hold on a loaded model: the model stays loaded until :meth:`release`."""

    def __init__(self, manager: ModelManager, model: LoadedModel, resolution: Resolution) -> None:
        self._manager = manager
        self.model = model
        self.resolution = resolution
        self._released = False

    @property
    def pipeline(self) -> Pipeline:
        return self.model.pipeline

    @property
    def served_id(self) -> str:
        return self.model.entry.id

    @property
    def substituted(self) -> bool:
        return self.resolution.substituted

    def release(self) -> None:
        """The request is over (idempotent); the keep-alive clock starts when the last one is."""
        if self._released:
            return
        self._released = True
        self.model.leases -= 1
        self.model.last_used = time.monotonic()
        self._manager._released(self.model)


class ModelManager:
    """The loaded models of one server (rules: module docstring).

    Args:
        catalog: the models offered and how requests name them.
        make_pipeline: wraps a loaded engine in a pipeline (the server's limits and policies),
            given the ids it answers to.
        loader: plans and loads engines; ``None`` when only pinned models are served.
        keep_alive_s: how long an idle model stays loaded when a request does not say.
        max_loaded: most models loaded at once (``None``: memory decides alone).
        load_wait_s: how long a request waits for its model to load before a 503.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        make_pipeline: Callable[[EngineLike, ServedModels], Pipeline],
        loader: ModelLoader | None = None,
        *,
        keep_alive_s: float = 300.0,
        max_loaded: int | None = None,
        load_wait_s: float = 120.0,
    ) -> None:
        self.catalog = catalog
        self.loader = loader
        self.keep_alive_s = keep_alive_s
        self.max_loaded = max_loaded
        self.load_wait_s = load_wait_s
        self._make_pipeline = make_pipeline
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._reserved: dict[str, int] = {}
        self._plans: dict[str, LoadPlan] = {}
        self._memory_lock: asyncio.Lock | None = None
        self._closed = False
        self._sweeps: set[asyncio.Task[int]] = set()
        #: Engines loaded (not counting pinned ones): tests check a model loads once.
        self.loads = 0

    # --- pinned models -----------------------------------------------------------------

    def pin(self, engine: EngineLike) -> LoadedModel:
        """Serve an engine loaded elsewhere, never unloading it (one-model serving)."""
        entry = self.catalog.get(engine.model_id) or self.catalog.entries[0]
        model = LoadedModel(entry, engine, self._pipeline(entry, engine), memory_bytes=0, pinned=True)
        self._loaded[entry.id] = model
        return model

    # --- requests ----------------------------------------------------------------------

    @property
    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    async def acquire(self, requested: str, keep_alive_s: float | None = None) -> Lease:
        """A lease on the model ``requested`` names, loading it first when it is not loaded.

        Args:
            requested: the request's ``model``.
            keep_alive_s: the request's ``keep_alive`` (``None``: the server's).

        Raises:
            ModelNotFoundError: nothing here answers to ``requested`` (404).
            ModelTooLargeError: it needs more memory than the server may use at all (400).
            ModelNotReadyError: still loading after ``load_wait_s``, or busy models hold the
                memory it needs (503, Retry-After).
            ModelLoadError: it failed to load (503).
        """
        resolution = self.catalog.resolve(requested)
        model = await self._ensure_loaded(resolution.entry)
        for _ in range(3):
            # Between the load finishing and this waiter resuming, another load may have evicted
            # the model (it was idle): take the lease only on a model that is still loaded.
            if self._loaded.get(resolution.entry.id) is model:
                break
            model = await self._ensure_loaded(resolution.entry)
        else:
            raise ModelNotReadyError(f"{resolution.entry.id} keeps being evicted to make room; retry shortly.")
        model.leases += 1
        if not model.pinned:
            model.keep_alive_s = self.keep_alive_s if keep_alive_s is None else keep_alive_s
        return Lease(self, model, resolution)

    async def load(self, requested: str, keep_alive_s: float | None = None) -> LoadedModel:
        """Load the model ``requested`` names (management API); raises as :meth:`acquire`."""
        lease = await self.acquire(requested, keep_alive_s)
        lease.release()
        return lease.model

    async def unload(self, requested: str) -> tuple[ModelEntry, bool]:
        """Unload the model ``requested`` names now, or as soon as its requests end.

        Returns:
            ``(entry, unloaded_now)``: False when it is busy (it unloads when the last request
            ends) or was not loaded.

        Raises:
            ModelNotFoundError: nothing here answers to ``requested``.
            InvalidRequestError: a pinned model (``serve --model``) cannot be unloaded.
        """
        entry = self.catalog.resolve(requested).entry
        model = self._loaded.get(entry.id)
        if model is None:
            return entry, False
        if model.pinned:
            raise InvalidRequestError(
                f"{entry.id} was loaded with `serve --model` and stays loaded; start `gemma-local serve` without "
                "--model to load and unload models on demand.",
                param="model",
            )
        model.keep_alive_s = 0.0
        if model.busy:
            return entry, False
        await self._unload(model, "unloaded on request")
        return entry, True

    async def sweep(self) -> int:
        """Unload every idle model whose keep-alive has run out; return how many."""
        now = time.monotonic()
        due = [m for m in self._loaded.values() if m.expires_in(now) == 0.0]
        for model in due:
            if self._loaded.get(model.entry.id) is model and not model.busy:
                await self._unload(model, f"idle for {model.keep_alive_s:g}s")
        return len(due)

    def states(self) -> list[ModelState]:
        """Every model offered, loaded or not, in catalog order."""
        now = time.monotonic()
        out = []
        entries = list(self.catalog.entries)
        for model in self._loaded.values():  # a pinned engine the catalog does not list
            if model.entry not in entries:
                entries.append(model.entry)
        for entry in entries:
            model = self._loaded.get(entry.id)
            if model is None:
                plan = self._plan_or_none(entry)
                out.append(
                    ModelState(
                        entry=entry,
                        ids=self.catalog.ids_of(entry),
                        loaded=False,
                        loading=entry.id in self._loading,
                        context_length=plan.ctx if plan else None,
                        memory_bytes=plan.memory_bytes if plan else None,
                    )
                )
                continue
            stats = model.engine.stats()
            out.append(
                ModelState(
                    entry=entry,
                    ids=self.catalog.ids_of(entry),
                    loaded=True,
                    loading=False,
                    context_length=stats.n_ctx_per_slot,
                    memory_bytes=model.memory_bytes or None,
                    slots=stats.slots,
                    active=stats.active,
                    queued=stats.queued,
                    expires_in_s=model.expires_in(now),
                    pinned=model.pinned,
                    loaded_at=model.loaded_at,
                )
            )
        return out

    def used_bytes(self) -> int:
        """Memory the loaded models and the loads in progress take, by their plans."""
        return sum(m.memory_bytes for m in self._loaded.values()) + sum(self._reserved.values())

    async def close(self, *, include_pinned: bool = False) -> None:
        """Unload every model (pinned ones only with ``include_pinned``); no new loads start."""
        self._closed = True
        loading = list(self._loading.values())
        if loading:
            # A load on its thread cannot be stopped: let it finish, and close what it made.
            await asyncio.wait(loading, timeout=LOAD_CLOSE_WAIT_S)
        for model in list(self._loaded.values()):
            if model.pinned and not include_pinned:
                self._loaded.pop(model.entry.id, None)
                continue
            await self._unload(model, "server stopping")

    def end_in_flight(self) -> int:
        """Cancel every generation running on any model; return how many."""
        return sum(m.engine.cancel_all() for m in list(self._loaded.values()))

    # --- loading -----------------------------------------------------------------------

    async def _ensure_loaded(self, entry: ModelEntry) -> LoadedModel:
        model = self._loaded.get(entry.id)
        if model is not None:
            return model
        if self._closed:
            raise ModelNotReadyError("The server is shutting down.")
        if self.loader is None:
            raise ModelNotReadyError(f"{entry.id} is not loaded.")
        task = self._loading.get(entry.id)
        if task is None:
            task = asyncio.ensure_future(self._load(entry))
            self._loading[entry.id] = task
            task.add_done_callback(lambda t, key=entry.id: self._load_done(key, t))
        try:
            # Shielded: a waiter that gives up (or whose client leaves) does not stop the load.
            return await asyncio.wait_for(asyncio.shield(task), self.load_wait_s)
        except TimeoutError:
            raise ModelNotReadyError(
                f"{entry.id} is still loading after {self.load_wait_s:g}s; retry shortly.", retry_after_s=5
            ) from None

    async def _load(self, entry: ModelEntry) -> LoadedModel:
        assert self.loader is not None
        plan = await anyio.to_thread.run_sync(self._plan, entry)
        budget = self.loader.budget_bytes
        if plan.memory_bytes > budget:
            raise ModelTooLargeError(
                f"{entry.id} needs about {plan.memory_bytes / GIB:.2f} GiB ({plan.parallel} slot(s) × {plan.ctx} "
                f"tokens) but this server may use {budget / GIB:.2f} GiB for models in all "
                f"({max(0, budget - self.used_bytes()) / GIB:.2f} GiB free now). Use a smaller model or quantization, "
                "or start the server with a smaller --ctx or --parallel.",
                model_id=entry.id,
                needed_bytes=plan.memory_bytes,
                budget_bytes=budget,
            )
        async with self._lock():
            await self._make_room(entry, plan.memory_bytes)
            self._reserved[entry.id] = plan.memory_bytes
        try:
            logger.info("loading %s: %s", entry.id, plan.detail or f"{plan.parallel} slot(s) × {plan.ctx} tokens")
            started = time.perf_counter()
            engine = await anyio.to_thread.run_sync(self.loader.load, entry, plan)
        finally:
            self._reserved.pop(entry.id, None)
        if self._closed:
            await anyio.to_thread.run_sync(engine.close)
            raise ModelNotReadyError("The server is shutting down.")
        model = LoadedModel(
            entry, engine, self._pipeline(entry, engine), plan.memory_bytes, keep_alive_s=self.keep_alive_s
        )
        self._loaded[entry.id] = model
        self.loads += 1
        elapsed = time.perf_counter() - started
        logger.info("loaded %s in %.2fs (%.2f GiB planned)", entry.id, elapsed, plan.memory_bytes / GIB)
        return model

    async def _make_room(self, entry: ModelEntry, need: int) -> None:
        """Unload idle models, least recently used first, until ``need`` fits (and the count does)."""
        assert self.loader is not None
        budget = self.loader.budget_bytes

        def short() -> bool:
            over_count = self.max_loaded is not None and len(self._loaded) + len(self._reserved) >= self.max_loaded
            return over_count or self.used_bytes() + need > budget

        while short():
            idle = [m for m in self._loaded.values() if not m.busy and not m.pinned]
            if not idle:
                busy = ", ".join(m.entry.id for m in self._loaded.values()) or "other loads in progress"
                raise ModelNotReadyError(
                    f"Not enough free memory to load {entry.id} ({need / GIB:.2f} GiB; "
                    f"{max(0, budget - self.used_bytes()) / GIB:.2f} GiB free) while these models are in use: "
                    f"{busy}. Retry once they finish.",
                    retry_after_s=5,
                )
            victim = min(idle, key=lambda m: m.last_used)
            await self._unload(victim, f"evicted to make room for {entry.id}")

    async def _unload(self, model: LoadedModel, why: str) -> None:
        if self._loaded.get(model.entry.id) is model:
            del self._loaded[model.entry.id]
        logger.info("unloading %s: %s", model.entry.id, why)
        # Off the event loop: closing waits for the engine's current micro-batch.
        await anyio.to_thread.run_sync(model.engine.close)

    def _load_done(self, key: str, task: asyncio.Task[LoadedModel]) -> None:
        self._loading.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here too, since every waiter may have given up (load_wait_s) already.
            error = task.exception()
            logger.warning("loading %s failed: %s", key, getattr(error, "message", error))

    def _released(self, model: LoadedModel) -> None:
        if model.leases == 0 and model.keep_alive_s == 0 and not model.pinned:
            # Unload now rather than at the next sweep: keep_alive 0 frees the memory at once.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # the sweep will do it
            task = loop.create_task(self.sweep())
            self._sweeps.add(task)
            task.add_done_callback(self._sweeps.discard)

    def _pipeline(self, entry: ModelEntry, engine: EngineLike) -> Pipeline:
        return self._make_pipeline(engine, _CatalogIds(self.catalog, entry, engine.info.metadata))

    def _lock(self) -> asyncio.Lock:
        if self._memory_lock is None:
            self._memory_lock = asyncio.Lock()
        return self._memory_lock

    def _plan(self, entry: ModelEntry) -> LoadPlan:
        assert self.loader is not None
        plan = self._plans.get(entry.id)
        if plan is None:
            plan = self._plans[entry.id] = self.loader.plan(entry)
        return plan

    def _plan_or_none(self, entry: ModelEntry) -> LoadPlan | None:
        if self.loader is None:
            return None
        try:
            return self._plan(entry)
        except (GemmaLocalError, OSError):
            return None


class _CatalogIds(ServedModels):
    """The ids a managed pipeline answers to: whatever the catalog resolves to its model
    (aliases and the hosted id's substitution included), checked again by the pipeline."""

    def __init__(self, catalog: ModelCatalog, entry: ModelEntry, metadata: dict[str, str]) -> None:
        super().__init__(entry.id, metadata)
        self._catalog = catalog
        self._entry = entry

    def check(self, requested: str) -> str:
        if self._catalog.resolve(requested).entry.id == self._entry.id:
            return requested
        return super().check(requested)
