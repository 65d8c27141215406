"""``gemma-local pull NAME``: download a model from the Hugging Face Hub into the local store."""

from __future__ import annotations

import json
import sys

import click

from gemma_local.cli_support import friendly_errors


@click.command()
@click.argument("name")
@click.option("--revision", help="Pin a commit sha (or branch/tag) of the model's repo.")
@click.option(
    "--memory-gib",
    type=click.FloatRange(min=0.1),
    help="Choose the quantization for a machine with this much free memory (CPU only) instead of measuring this one.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be downloaded, and stop.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout; no progress bar.")
@friendly_errors
def pull(name: str, revision: str | None, memory_gib: float | None, dry_run: bool, as_json: bool) -> None:
    """Download NAME into the local store, resuming any earlier partial download.

    NAME is a catalog model (gemma-3-27b, gemma-3-12b, gemma-3-4b, gemma-3-1b, gemma-3-270m),
    optionally with a quantization (gemma-3-27b:q4_k_m, gemma-3-4b:qat), or any GGUF repo on
    the Hub as hf.co/ORG/REPO[:QUANT_OR_FILE]. With no quantization, the best one the memory
    planner fits on this machine (one slot of 8192 tokens at least, as serve would plan it) is
    chosen. Every file is checked against the Hub's sha256 before the
    model is registered. Gated repos need HF_TOKEN; HF_ENDPOINT selects a mirror.
    """
    from gemma_local.hub.catalog import load_catalog
    from gemma_local.hub.download import pull as run_pull
    from gemma_local.hub.plan import plan_pull
    from gemma_local.hub.progress import human_bytes, make_progress
    from gemma_local.hub.remote import HubClient
    from gemma_local.hub.store import ModelStore
    from gemma_local.memory import GIB, MachineMemory

    def say(text: str) -> None:
        if not as_json:
            click.echo(text, err=True)

    machine = MachineMemory.assume(int(memory_gib * GIB), "memory given by --memory-gib") if memory_gib else None
    client, store = HubClient(), ModelStore()
    plan = plan_pull(name, revision=revision, machine=machine, client=client, store=store)
    if plan.choice is not None:
        say(f"Chose {plan.name} ({load_catalog().label(plan.choice.quant)}): {plan.choice.reason}.")
    if plan.warning:
        say(f"warning: {plan.warning}")
    if dry_run:
        if as_json:
            click.echo(json.dumps({"status": "planned", "plan": plan.as_dict()}, indent=2))
        else:
            _print_plan(plan)
        return
    existing = store.find(plan.name)
    same_files = existing is not None and {f.path for f in existing.files} == {
        store.relative(f.dest) for f in plan.files
    }
    if plan.download_bytes == 0 and existing is not None and same_files:
        entry = store.register(existing.model_copy(update={"aliases": sorted({*existing.aliases, *plan.aliases})}))
        if as_json:
            click.echo(json.dumps({"status": "already_pulled", "model": entry.summary()}, indent=2))
        else:
            click.echo(f"{entry.name} is already pulled ({plan.commit[:12]}): {entry.path}")
        return
    resumed = sum(f.have_bytes for f in plan.files if not f.stored)
    say(
        f"Pulling {plan.name} from {plan.repo_id} @ {plan.commit[:12]}: {human_bytes(plan.download_bytes)} to fetch"
        + (f", resuming after {human_bytes(resumed)} already downloaded" if resumed else "")
        + "."
    )
    try:
        entry = run_pull(plan, client=client, store=store, progress=make_progress(not as_json))
    except KeyboardInterrupt:
        click.echo("Interrupted. The bytes fetched so far are kept; run the same command to resume.", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps({"status": "pulled", "model": entry.summary()}, indent=2))
        return
    vision = f" + vision projector {entry.mmproj_path.name}" if entry.mmproj_path else ""
    click.echo(f"Pulled {entry.name} ({human_bytes(entry.size_bytes)}, sha256 verified){vision}: {entry.path}")


def _print_plan(plan) -> None:
    from gemma_local.hub.progress import human_bytes

    click.echo(f"{plan.name}: {plan.repo_id} @ {plan.commit}")
    for f in plan.files:
        state = "stored" if f.stored else (f"{human_bytes(f.have_bytes)} already here" if f.have_bytes else "to fetch")
        click.echo(f"  {f.role:<6} {f.remote.path}  {human_bytes(f.remote.size)}  ({state})")
    verdict = "fits" if plan.fits_disk else "does NOT fit"
    click.echo(
        f"To download: {human_bytes(plan.download_bytes)}; free disk: {human_bytes(plan.free_bytes)} ({verdict})."
    )
