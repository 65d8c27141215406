"""``gemma-local info``: the machine, a model and the memory plan, before loading anything."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from gemma_local.cli_support import (
    engine_options,
    engine_settings,
    friendly_errors,
    plan_for,
    prefix_disk_policy,
    rpc_workers,
    speculation_policy,
)

KV_TYPES = ("f16", "q8_0", "q4_0")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _prefix_disk(settings) -> dict[str, Any]:
    policy = prefix_disk_policy(settings)
    if policy is None:
        return {"enabled": False}
    sizes = [p.stat().st_size for p in policy.root.glob("*/*.gpc")] if policy.root.is_dir() else []
    return {
        "enabled": True,
        "path": str(policy.root),
        "max_bytes": policy.max_bytes,
        "min_new_tokens": policy.min_tokens,
        "files": len(sizes),
        "used_bytes": sum(sizes),
    }


def _cost_table(shape, ctxs: list[int]) -> list[dict[str, Any]]:
    from gemma_local.memory import estimate

    rows = []
    for ctx in ctxs:
        for kv_type in KV_TYPES:
            iswa = estimate(shape, ctx=ctx, kv_type=kv_type)
            full = estimate(shape, ctx=ctx, kv_type=kv_type, swa_full=True)
            rows.append(
                {
                    "ctx": ctx,
                    "kv_type": kv_type,
                    "kv_iswa_bytes": iswa.kv,
                    "kv_full_bytes": full.kv,
                    "total_iswa_bytes": iswa.total,
                }
            )
    return rows


@click.command()
@click.argument("model_arg", metavar="[MODEL]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@engine_options
@friendly_errors
def info(model_arg: str | None, as_json: bool, **engine_flags: Any) -> None:
    """Show this machine, MODEL's architecture and the memory plan gemma-local would use.

    Also shows what Gemma 3 27B would need at 128K tokens of context for each KV cache type,
    so you can see what fits before you download it. Nothing is loaded.
    """
    import psutil

    from gemma_local.engine import CheckpointPolicy, rpc
    from gemma_local.hub.catalog import load_catalog
    from gemma_local.hub.resolve import resolve_model
    from gemma_local.memory import MachineMemory, ModelShape

    if model_arg:
        engine_flags["model"] = model_arg
    settings = engine_settings(**engine_flags)
    resolved = resolve_model(settings.model)
    shape = ModelShape.from_gguf(resolved.path)
    workers = rpc_workers(settings)
    machine = MachineMemory.detect()
    spec = speculation_policy(settings)
    chosen = plan_for(
        settings, resolved.path, mmproj_path=settings.mmproj or resolved.mmproj, machine=machine, workers=workers
    )
    big = load_catalog().models["gemma-3-27b"]
    gemma_3_27b = big.shape("Gemma 3 27B (QAT Q4_0)", big.quants["qat"].approx_bytes)
    ctxs = sorted({c for c in (4096, 32768, shape.n_ctx_train) if c <= shape.n_ctx_train})
    result = {
        "machine": {
            "cores_physical": psutil.cpu_count(logical=False),
            "cores_logical": os.cpu_count(),
            "ram_total_bytes": machine.total_ram,
            "ram_available_bytes": machine.available_ram,
            "gpu_backend": machine.gpu_backend,
            "vram_total_bytes": machine.vram_total,
            "vram_free_bytes": machine.vram_free,
            "gpus": [{"total_bytes": g.total, "free_bytes": g.free} for g in machine.gpus],
            "unified_memory": machine.unified,
            "rpc_backend": rpc.supported(),
            "plan_budget_bytes": machine.budget,
            "plan_budget": machine.describe_budget(),
        },
        "model": {
            "id": resolved.id,
            "path": str(resolved.path),
            "name": shape.name,
            "architecture": shape.architecture,
            "weights_bytes": shape.weights_bytes,
            "layers": shape.n_layer,
            "global_layers": shape.n_global_layers,
            "sliding_window_layers": shape.n_swa_layers,
            "sliding_window": shape.n_swa,
            "heads": shape.n_head,
            "kv_heads": shape.n_head_kv,
            "head_dim": shape.head_dim_k,
            "context_trained": shape.n_ctx_train,
            "vocab": shape.n_vocab,
        },
        "plan": chosen.as_dict(),
        "speculative": {"setting": settings.speculative, **vars(spec)},
        "checkpoint_every": CheckpointPolicy(checkpoint_every=settings.checkpoint_every).every(shape.n_swa),
        "prefix_disk": _prefix_disk(settings),
        "kv_cost": _cost_table(shape, ctxs),
        "gemma_3_27b_at_128k": _cost_table(gemma_3_27b, [131072]),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    m, mo, e = result["machine"], result["model"], chosen.estimate
    checkpoint_every = result["checkpoint_every"]
    click.echo("Machine")
    click.echo(f"  cores            {m['cores_physical']} physical, {m['cores_logical']} logical")
    click.echo(f"  RAM              {_gib(m['ram_available_bytes'])} free of {_gib(m['ram_total_bytes'])}")
    gpu = "yes" if machine.gpu_backend else "no (CPU build)"
    if machine.vram_total:
        count = len(machine.gpus)
        gpu += f", {_gib(machine.vram_free or 0)} free of {_gib(machine.vram_total)} VRAM on {count} GPU(s)"
    elif machine.unified and machine.gpu_backend:
        gpu += ", Metal (unified memory)"
    click.echo(f"  GPU offload      {gpu}")
    click.echo(
        "  RPC backend      "
        + ("yes (gemma-local worker, --rpc)" if m["rpc_backend"] else "no: `make install` rebuilds with GGML_RPC=ON")
    )
    click.echo(f"  usable by a plan {_gib(machine.budget)} ({machine.describe_budget()})")
    click.echo(f"Model {mo['id']}  ({mo['path']})")
    click.echo(f"  architecture     {mo['architecture']}, {mo['name']}")
    click.echo(f"  weights          {_gib(mo['weights_bytes'])}")
    click.echo(
        f"  layers           {mo['layers']} ({mo['global_layers']} global, {mo['sliding_window_layers']} "
        f"sliding-window of {mo['sliding_window']} tokens)"
    )
    click.echo(f"  attention        {mo['heads']} heads, {mo['kv_heads']} KV heads × {mo['head_dim']} dims")
    click.echo(f"  trained context  {mo['context_trained']} tokens")
    click.echo("Plan")
    click.echo(f"  slots × context  {chosen.parallel} × {chosen.ctx} tokens, {chosen.kv_type} KV cache")
    click.echo(f"  GPU layers       {chosen.gpu_layers}")
    click.echo(
        f"  memory           {_gib(e.total)} = weights {_gib(e.weights)} + KV {_gib(e.kv)} "
        f"+ compute {_gib(e.compute)} + output {_gib(e.output)}"
        + (f" + vision projector {_gib(e.projector)}" if e.projector else "")
        + (f" + checkpoints {_gib(e.checkpoints_total)}" if e.checkpoints_total else "")
        + (f" + draft model {_gib(e.draft)}" if e.draft else "")
    )
    click.echo(
        f"  checkpoints      {e.checkpoints} per slot, every {checkpoint_every} prompt tokens, "
        f"{e.checkpoint_bytes / 2**20:.1f} MiB each"
        if e.checkpoint_bytes
        else "  checkpoints      none (no sliding-window layers, or a full-size cache)"
    )
    drafter = f"draft model {spec.draft_model}" if spec.uses_draft_model else "n-gram drafts (prompt lookup"
    click.echo(
        f"  speculative      {settings.speculative}: {drafter}"
        + (", greedy requests only" if spec.mode == "auto" else "")
        + ("" if spec.uses_draft_model else ")")
        + f", up to {spec.draft_max} tokens a step, while at most {spec.max_busy} slots generate"
        if spec.enabled
        else "  speculative      off (one token per step)"
    )
    if e.draft:
        click.echo(
            f"  draft model      {_gib(e.draft)} = weights {_gib(e.draft_weights)} + KV {_gib(e.draft_kv)} "
            f"({chosen.parallel} sequences) + compute {_gib(e.draft_compute)}"
            + (f", {e.draft_checkpoint_bytes / 2**20:.1f} MiB per checkpoint" if e.draft_checkpoint_bytes else "")
        )
    disk = result["prefix_disk"]
    click.echo(
        f"  prefix on disk   {disk['path']}, up to {_gib(disk['max_bytes'])} (now {_gib(disk['used_bytes'])} in "
        f"{disk['files']} file(s)); prompts saved every {disk['min_new_tokens']} new tokens"
        if disk["enabled"]
        else "  prefix on disk   off (--prefix-disk turns it on)"
    )
    for reason in chosen.reasons:
        click.echo(f"  - {reason}")
    if chosen.split is not None:
        click.echo("Split over devices (--rpc)")
        click.echo(f"  {'device':<30} {'layers':>6}  {'weights':>10}  {'KV':>10}  {'compute':>10}  {'usable':>10}")
        for row in chosen.split.devices:
            click.echo(
                f"  {row.name:<30} {len(row.layers):>6}  {_gib(row.weights):>10}  {_gib(row.kv):>10}  "
                f"{_gib(row.compute):>10}  {_gib(row.budget):>10}" + ("" if row.fits else "  DOES NOT FIT")
            )
    for title, rows in (
        (f"KV cache for one slot of {mo['id']}", result["kv_cost"]),
        ("Gemma 3 27B, one slot of 128K tokens", result["gemma_3_27b_at_128k"]),
    ):
        click.echo(title)
        click.echo(f"  {'context':>8}  {'KV type':<7}  {'KV (iSWA)':>11}  {'KV (full)':>11}  {'total (iSWA)':>13}")
        for r in rows:
            click.echo(
                f"  {r['ctx']:>8}  {r['kv_type']:<7}  {_gib(r['kv_iswa_bytes']):>11}  {_gib(r['kv_full_bytes']):>11}  "
                f"{_gib(r['total_iswa_bytes']):>13}"
            )
