"""Helpers every CLI command module shares: one-line errors, the --debug switch, and options
derived from the settings fields.

A command's settings options come from :func:`setting_option`: the flag name, type, bounds,
choices and help are the settings field's own, and the option defaults to ``None`` without
reading the environment, so :func:`settings_from_flags` passes only the flags given and the
settings object applies ``GEMMA_LOCAL_*`` and the defaults (flag > env > default).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsError

from gemma_local.errors import GemmaLocalError, ModelLoadError
from gemma_local.settings import AppSettings, EngineSettings, env_var

if TYPE_CHECKING:  # the planner is imported when a command needs it, not at CLI start-up
    from gemma_local.engine.rpc import WorkerDevice
    from gemma_local.hub.resolve import ResolvedModel
    from gemma_local.memory import MachineMemory, Plan

S = TypeVar("S", bound=BaseSettings)
#: The disk prefix cache's folder under GEMMA_LOCAL_HOME (see gemma_local.engine.prefix_disk).
PREFIX_CACHE_DIR = "prefix-cache"


class CliError(click.ClickException):
    """A failure the user can act on: printed as one line, exit code 1."""

    def format_message(self) -> str:
        return self.message


def _debug_enabled() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().obj if ctx else None
    return bool((root or {}).get("debug")) or AppSettings().debug


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn gemma-local's own errors into one clear line (unless --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GemmaLocalError as e:
            if _debug_enabled():
                raise
            raise CliError(e.message) from e

    return wrapper


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


_BOUNDS = (("ge", "min", False), ("gt", "min", True), ("le", "max", False), ("lt", "max", True))


def _click_type(annotation: Any, metadata: list[Any]) -> Any:
    """click's type for a field: a range from its bounds, a choice from its ``Literal``."""
    if get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in get_args(annotation)])
    if annotation in (int, float):
        # pydantic keeps Field(ge=…, le=…) as annotated-types constraints: Ge(ge=256), Le(le=…), …
        bounds: dict[str, Any] = {}
        for m in metadata:
            for attr, key, is_open in _BOUNDS:
                if getattr(m, attr, None) is not None:
                    bounds[key] = getattr(m, attr)
                    if is_open:
                        bounds[f"{key}_open"] = True
        if not bounds:
            return annotation
        return click.IntRange(**bounds) if annotation is int else click.FloatRange(**bounds)
    if annotation is Path:
        return click.Path(path_type=Path)
    if annotation in (str, SecretStr):
        return click.STRING
    raise TypeError(f"no click type for a setting of type {annotation!r}")


def _shown_default(value: Any) -> str | None:
    if value is None or value == []:
        return None  # the description says what happens unset
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def setting_option(settings: type[BaseSettings], name: str, *decls: str, **overrides: Any) -> Callable[[Any], Any]:
    """A click option for the settings field ``name``: flag, type, bounds and help from the field.

    Args:
        settings: the settings class holding the field.
        name: the field; it is also the keyword the command receives.
        decls: flag names when not ``--field-name`` (``"-m", "--model"``; ``"--cors-origin"``).
        overrides: click keywords to use instead of the derived ones (``type``, ``metavar``).

    A ``bool`` field becomes ``--x/--no-x``, a ``list`` field a repeatable option. The option's
    default is ``None`` (an empty tuple when repeatable): not given, so the env var or default applies.
    """
    field = settings.model_fields[name]
    annotation = _unwrap_optional(field.annotation)
    flag = "--" + name.replace("_", "-")
    help_text = field.description or ""
    extra = [f"env: {env_var(name)}"]
    default = _shown_default(field.get_default(call_default_factory=True))
    if default is not None:
        extra.append(f"default: {default}")
    kwargs: dict[str, Any] = {"default": None}
    if annotation is bool:
        decls = decls or (f"{flag}/--no-{flag[2:]}",)
    elif get_origin(annotation) is list:
        kwargs.update(multiple=True, default=())
        extra.append("repeatable")
    else:
        kwargs["type"] = _click_type(annotation, field.metadata)
    kwargs["help"] = f"{help_text}  [{'; '.join(extra)}]".strip()
    kwargs.update(overrides)
    return click.option(*(decls or (flag,)), name, **kwargs)


def settings_from_flags(settings: type[S], flags: Mapping[str, Any]) -> S:
    """``settings`` built from the flags given (``None`` and empty repeats skipped), then env, then defaults.

    Raises:
        CliError: a value, most likely from an environment variable, is not valid for its field.
    """
    given = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in flags.items()
        if k in settings.model_fields and v is not None and v != ()
    }
    try:
        return settings(**given)
    except ValidationError as e:
        error = e.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        where = f"--{field.replace('_', '-')} or {env_var(field)}" if field in settings.model_fields else field
        raise CliError(f"Invalid value for {where}: {error['msg']}.") from e
    except SettingsError as e:  # an env var that is not JSON where a list is expected
        fields = settings.model_fields.items()
        lists = [env_var(n) for n, f in fields if get_origin(_unwrap_optional(f.annotation)) is list]
        hint = f"; {', '.join(lists)} take a JSON list, e.g. '[\"https://example.com\"]'" if lists else ""
        raise CliError(f"Invalid environment setting: {e}{hint}.") from e


def engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that loads a model shares (fields of ``EngineSettings``)."""
    options = [
        setting_option(EngineSettings, "model", "-m", "--model"),
        setting_option(EngineSettings, "mmproj", type=click.Path(dir_okay=False)),
        setting_option(EngineSettings, "ctx"),
        setting_option(EngineSettings, "parallel"),
        setting_option(EngineSettings, "threads"),
        setting_option(EngineSettings, "kv_type"),
        setting_option(EngineSettings, "flash_attn"),
        setting_option(EngineSettings, "swa_full"),
        setting_option(EngineSettings, "gpu_layers"),
        setting_option(EngineSettings, "rpc", metavar="HOST:PORT[,...]"),
        setting_option(EngineSettings, "tensor_split", metavar="SHARES"),
        setting_option(EngineSettings, "checkpoints"),
        setting_option(EngineSettings, "checkpoint_every"),
        setting_option(EngineSettings, "prefix_disk"),
        setting_option(EngineSettings, "prefix_disk_max_gib", metavar="GIB"),
        setting_option(EngineSettings, "prefix_disk_min_tokens", metavar="TOKENS"),
        setting_option(EngineSettings, "speculative"),
        setting_option(EngineSettings, "draft_model", metavar="NAME|PATH"),
        setting_option(EngineSettings, "draft_max"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def engine_settings(**flags: Any) -> EngineSettings:
    """Flags override GEMMA_LOCAL_* env vars, which override defaults (other keywords are ignored).

    Raises:
        CliError: an invalid value (e.g. ``GEMMA_LOCAL_CTX=12``).
    """
    return settings_from_flags(EngineSettings, flags)


def rpc_workers(settings: EngineSettings) -> list[WorkerDevice]:
    """The devices of the ``--rpc`` workers, registered with llama.cpp, with their free memory now.

    Raises:
        WorkerUnreachableError: a worker does not answer (named in the message).
        RpcNotBuiltError: llama.cpp was built without RPC (the message says how to rebuild).
    """
    from gemma_local.engine import rpc

    endpoints = rpc.parse_endpoints(settings.rpc)
    return rpc.add_workers(endpoints) if endpoints else []


def plan_for(
    settings: EngineSettings,
    model_path: str | os.PathLike[str],
    *,
    mmproj_path: str | os.PathLike[str] | None = None,
    default_parallel: int | None = None,
    machine: MachineMemory | None = None,
    workers: Sequence[WorkerDevice] = (),
) -> Plan:
    """The memory plan for this model under these settings (user choices kept, the rest fitted).

    Args:
        settings: the user's flags and env vars.
        model_path: the GGUF to plan for.
        mmproj_path: the vision projector that will be loaded beside it, if any.
        default_parallel: slots to use when the user set none.
        machine: the memory to plan for (default: this machine, detected now).
        workers: RPC workers' devices (:func:`rpc_workers`): their memory counts, and the plan
            says which layers each holds (``Plan.split``).
    """
    from gemma_local.memory import GpuMemory, MachineMemory, ModelShape, plan

    machine = machine or MachineMemory.detect()
    if workers:
        machine = dataclasses.replace(machine, workers=tuple(GpuMemory(w.total, w.free) for w in workers))
    shape = ModelShape.from_gguf(model_path)
    speculation = speculation_policy(settings)
    draft = ModelShape.from_gguf(speculation.draft_model) if speculation.uses_draft_model else None
    chosen = plan(
        shape,
        machine,
        ctx=settings.ctx,
        parallel=settings.parallel or default_parallel,
        kv_type=settings.kv_type,
        swa_full=settings.swa_full,
        flash_attn=settings.flash_attn != "off",
        n_ubatch=settings.n_ubatch,
        checkpoints=settings.checkpoints,
        draft_max=settings.draft_max if speculation.enabled else 0,
        draft=draft,
        # A missing projector file is the engine's error to report, with its own message.
        projector_bytes=Path(mmproj_path).stat().st_size if mmproj_path and Path(mmproj_path).is_file() else 0,
    )
    if not workers:
        return chosen
    return _with_split(settings, model_path, shape, chosen, machine, workers)


def _with_split(settings, model_path, shape, chosen: Plan, machine: MachineMemory, workers) -> Plan:
    from gemma_local.memory.split import LayerWeights, SplitDevice, local_gpu_devices, parse_tensor_split, plan_split

    devices = [SplitDevice(f"RPC{w.index}[{w.endpoint}]", w.endpoint, w.free, w.total) for w in workers]
    devices += local_gpu_devices(machine.gpus) if machine.gpu_backend else []
    try:
        shares = parse_tensor_split(settings.tensor_split, len(devices))
    except ValueError as e:
        raise CliError(str(e)) from e
    split = plan_split(
        LayerWeights.from_gguf(model_path),
        shape,
        chosen.estimate,
        devices,
        cpu_budget=machine.ram_budget,
        shares=shares,
        gpu_layers=settings.gpu_layers,
    )
    return dataclasses.replace(
        chosen,
        gpu_layers=split.gpu_layers,
        fits=chosen.fits and split.fits,
        reasons=[*chosen.reasons, *split.reasons],
        split=split,
    )


def check_memory(model_id: str, chosen: Plan, machine: MachineMemory) -> None:
    """Refuse a plan that needs more memory than the machine has at all.

    llama.cpp would try anyway: the allocation either fails with a terse log line or, with
    overcommit, succeeds and the kernel's OOM killer ends the process mid-load with no message.

    Args:
        model_id: the model, for the message.
        chosen: the ``Plan`` from :func:`plan_for`.
        machine: the ``MachineMemory`` it was planned for.

    Raises:
        ModelLoadError: the estimate exceeds physical RAM (plus the GPUs' memory, if any).
    """
    from gemma_local.memory import GIB

    limit = machine.total_ram + (machine.vram_total or 0) + sum(w.total for w in machine.workers)
    need = chosen.estimate.total
    if need <= limit:
        return
    where = "RAM and GPU memory" if machine.vram_total else "RAM"
    where += " (with its RPC workers)" if machine.workers else ""
    raise ModelLoadError(
        f"Not enough memory to load {model_id} with {chosen.ctx} tokens × {chosen.parallel} slot(s) and a "
        f"{chosen.kv_type} KV cache: that needs about {need / GIB:.1f} GiB and this machine has "
        f"{limit / GIB:.1f} GiB of {where}. Use a smaller context (--ctx), fewer slots (--parallel), "
        "--kv-type q8_0, or a smaller quantization or model (e.g. `gemma-local pull gemma-3-27b:q4_0`, gemma-3-4b)."
    )


def open_engine(
    settings: EngineSettings,
    *,
    default_parallel: int | None = None,
    announce: bool = False,
    machine: MachineMemory | None = None,
):
    """Resolve the model, plan its memory and load it; the heavy imports happen only here.

    Args:
        settings: the user's flags and env vars; unset sizes are chosen by the memory planner.
        default_parallel: slots to use when the user set none (1 for one-shot CLI commands).
        announce: print the chosen plan and why on stderr (``serve`` does).
        machine: the memory to plan for (default: this machine, detected now); serving many
            models plans each against the memory measured at start, so plans stay the same.
    """
    from gemma_local.engine import CheckpointPolicy, ContextParams, Engine
    from gemma_local.hub.resolve import resolve_model
    from gemma_local.memory import GpuMemory, MachineMemory

    resolved = resolve_model(settings.model)
    workers = rpc_workers(settings)
    machine = machine or MachineMemory.detect()
    mmproj = settings.mmproj or resolved.mmproj
    chosen = plan_for(
        settings, resolved.path, mmproj_path=mmproj, default_parallel=default_parallel, machine=machine, workers=workers
    )
    if workers:
        machine = dataclasses.replace(machine, workers=tuple(GpuMemory(w.total, w.free) for w in workers))
    if announce:
        click.echo(
            f"Model {resolved.id}: {chosen.parallel} slot(s) × {chosen.ctx} tokens, {chosen.kv_type} KV cache, "
            f"~{chosen.estimate.total / 2**30:.2f} GiB.",
            err=True,
        )
        for reason in chosen.reasons:
            click.echo(f"  {reason}", err=True)
        for row in chosen.split.devices if chosen.split else ():
            click.echo(
                f"  {row.name:<28} {len(row.layers):>3} layers  {row.total / 2**30:6.2f} GiB of "
                f"{row.budget / 2**30:.2f} GiB usable",
                err=True,
            )
    check_memory(resolved.id, chosen, machine)
    params = ContextParams(
        n_ctx_per_seq=chosen.ctx,
        n_seq=chosen.parallel,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        n_threads=settings.threads,
        n_threads_batch=settings.batch_threads,
        kv_type=chosen.kv_type,
        flash_attn=settings.flash_attn,
        swa_full=settings.swa_full,
        gpu_layers=settings.gpu_layers if settings.gpu_layers is not None else chosen.gpu_layers,
        rpc_servers=tuple(dict.fromkeys(w.endpoint for w in workers)),
        tensor_split=chosen.split.tensor_split if chosen.split else _local_tensor_split(settings),
    )
    return Engine(
        resolved.path,
        params,
        max_queue=settings.max_queue,
        default_seed=settings.seed,
        model_id=resolved.id,
        mmproj_path=mmproj,
        checkpoints=CheckpointPolicy(chosen.estimate.checkpoints, settings.checkpoint_every),
        speculation=speculation_policy(settings),
        prefix_disk=prefix_disk_policy(settings),
    )


def prefix_disk_policy(settings: EngineSettings):
    """The engine's :class:`~gemma_local.engine.DiskCachePolicy` (None: ``--no-prefix-disk``)."""
    from gemma_local.engine import DiskCachePolicy
    from gemma_local.paths import home_dir

    if not settings.prefix_disk:
        return None
    return DiskCachePolicy(
        root=home_dir() / PREFIX_CACHE_DIR,
        max_bytes=int(settings.prefix_disk_max_gib * 2**30),
        min_tokens=settings.prefix_disk_min_tokens,
    )


def _local_tensor_split(settings: EngineSettings) -> tuple[float, ...]:
    # --tensor-split without --rpc: the shares of this machine's GPUs, given to llama.cpp as is.
    from gemma_local.memory.split import parse_tensor_split

    try:
        return parse_tensor_split(settings.tensor_split, 16) or ()
    except ValueError as e:
        raise CliError(str(e)) from e


def speculation_policy(settings: EngineSettings):
    """The engine's :class:`~gemma_local.engine.SpeculationPolicy` for these settings, with the
    draft model resolved to its file (a name in the store, or a path) where one is used.

    Raises:
        DraftModelError: ``--speculative draft`` without ``--draft-model``.
        ModelNotFoundError: the draft model is not in the store, or no file is at its path.
    """
    from gemma_local.engine import SpeculationPolicy

    draft = None
    if settings.draft_model and settings.speculative in ("draft", "auto"):
        draft = str(draft_model_path(settings.draft_model))
    return SpeculationPolicy(mode=settings.speculative, draft_max=settings.draft_max, draft_model=draft)


def draft_model_path(name: str) -> Path:
    """The GGUF of ``--draft-model`` NAME|PATH, found as ``--model`` is.

    Raises:
        ModelNotFoundError: nothing local answers to ``name`` (the message says it is the draft model).
    """
    from gemma_local.errors import ModelNotFoundError
    from gemma_local.hub.resolve import resolve_model

    try:
        return Path(resolve_model(name).path)
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"Draft model (--draft-model): {e.message}") from e


def echo_base_model_notice(model: ResolvedModel | str | None) -> None:
    """Say on stderr when the model to load is pre-trained, and which ``pull`` gives an assistant.

    Args:
        model: a ``ResolvedModel``, or what ``--model`` holds (``None``: the embedded default).
            A name that does not resolve prints nothing: loading it reports the error.
    """
    from gemma_local.hub.advice import base_model_notice
    from gemma_local.hub.resolve import ResolvedModel, resolve_model

    try:
        resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
        line = base_model_notice(resolved)
    except GemmaLocalError:
        return
    if line is not None:
        click.echo(line, err=True)
