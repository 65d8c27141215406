"""Helpers every CLI command module shares: one-line errors and the --debug switch."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from gemma_local.errors import GemmaLocalError, ModelLoadError
from gemma_local.settings import EngineSettings

if TYPE_CHECKING:
    from gemma_local.hub.resolve import ResolvedModel

KV_TYPES = ("f16", "q8_0", "q4_0")


class CliError(click.ClickException):
    """A failure the user can act on: printed as one line, exit code 1."""

    def format_message(self) -> str:
        return self.message


def _debug_enabled() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().obj if ctx else None
    return bool((root or {}).get("debug")) or os.environ.get("GEMMA_LOCAL_DEBUG") == "1"


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


def engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that loads a model shares."""
    options = [
        click.option(
            "-m",
            "--model",
            envvar="GEMMA_LOCAL_MODEL",
            help="Model name or GGUF path (default: the embedded Gemma 3 270M).",
        ),
        click.option(
            "--mmproj",
            type=click.Path(dir_okay=False),
            envvar="GEMMA_LOCAL_MMPROJ",
            help="Vision projector GGUF (default: the one stored with the model).",
        ),
        click.option("--ctx", type=click.IntRange(256, 131072), help="Context tokens per request slot."),
        click.option("--parallel", type=click.IntRange(1, 64), help="Requests generated at once."),
        click.option("--threads", type=click.IntRange(1, 512), help="CPU threads (default: physical cores)."),
        click.option("--kv-type", type=click.Choice(KV_TYPES), help="KV cache type (quantized needs flash attention)."),
        click.option("--flash-attn", type=click.Choice(["auto", "on", "off"]), help="Flash attention (default auto)."),
        click.option(
            "--swa-full/--no-swa-full", default=None, help="Full-size cache on sliding-window layers (default off)."
        ),
        click.option("--gpu-layers", type=click.IntRange(-1), help="Layers to offload to a GPU (-1 all, 0 none)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def engine_settings(**flags: Any) -> EngineSettings:
    """Flags override GEMMA_LOCAL_* env vars, which override defaults."""
    names = EngineSettings.model_fields.keys()
    return EngineSettings(**{k: v for k, v in flags.items() if k in names and v is not None})


def plan_for(settings: EngineSettings, model_path, *, default_parallel: int | None = None, machine=None):
    """The memory plan for this model under these settings (user choices kept, the rest fitted).

    ``machine`` is the ``MachineMemory`` to plan for (default: this machine, detected now).
    """
    from gemma_local.engine.planner import MachineMemory, ModelShape, plan

    return plan(
        ModelShape.from_gguf(model_path),
        machine or MachineMemory.detect(),
        ctx=settings.ctx,
        parallel=settings.parallel or default_parallel,
        kv_type=settings.kv_type,
        swa_full=settings.swa_full,
        flash_attn=settings.flash_attn != "off",
        n_ubatch=settings.n_ubatch,
    )


def check_memory(model_id: str, chosen: Any, machine: Any) -> None:
    """Refuse a plan that needs more memory than the machine has at all.

    llama.cpp would try anyway: the allocation either fails with a terse log line or, with
    overcommit, succeeds and the kernel's OOM killer ends the process mid-load with no message.

    Args:
        model_id: the model, for the message.
        chosen: the ``Plan`` from :func:`plan_for`.
        machine: the ``MachineMemory`` it was planned for.

    Raises:
        ModelLoadError: the estimate exceeds physical RAM (plus the GPU's memory, if any).
    """
    from gemma_local.engine.planner import GIB

    limit = machine.total_ram + (machine.vram_total or 0)
    need = chosen.estimate.total
    if need <= limit:
        return
    where = "RAM and GPU memory" if machine.vram_total else "RAM"
    raise ModelLoadError(
        f"Not enough memory to load {model_id} with {chosen.ctx} tokens × {chosen.parallel} slot(s) and a "
        f"{chosen.kv_type} KV cache: that needs about {need / GIB:.1f} GiB and this machine has "
        f"{limit / GIB:.1f} GiB of {where}. Use a smaller context (--ctx), fewer slots (--parallel), "
        "--kv-type q8_0, or a smaller quantization or model (e.g. `gemma-local pull gemma-3-27b:q4_0`, gemma-3-4b)."
    )


def open_engine(settings: EngineSettings, *, default_parallel: int | None = None, announce: bool = False):
    """Resolve the model, plan its memory and load it; the heavy imports happen only here.

    Args:
        settings: the user's flags and env vars; unset sizes are chosen by the memory planner.
        default_parallel: slots to use when the user set none (1 for one-shot CLI commands).
        announce: print the chosen plan and why on stderr (``serve`` does).
    """
    from gemma_local.engine import ContextParams, Engine
    from gemma_local.engine.planner import MachineMemory
    from gemma_local.hub.resolve import resolve_model

    resolved = resolve_model(settings.model)
    machine = MachineMemory.detect()
    chosen = plan_for(settings, resolved.path, default_parallel=default_parallel, machine=machine)
    if announce:
        click.echo(
            f"Model {resolved.id}: {chosen.parallel} slot(s) × {chosen.ctx} tokens, {chosen.kv_type} KV cache, "
            f"~{chosen.estimate.total / 2**30:.2f} GiB.",
            err=True,
        )
        for reason in chosen.reasons:
            click.echo(f"  {reason}", err=True)
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
    )
    return Engine(
        resolved.path,
        params,
        max_queue=settings.max_queue,
        default_seed=settings.seed,
        model_id=resolved.id,
        mmproj_path=settings.mmproj or resolved.mmproj,
    )


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
