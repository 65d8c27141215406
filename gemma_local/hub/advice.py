"""Which model to pull next, and the one-line notice that a pre-trained model is loaded.

``recommend_pull`` answers offline, from the catalog's approximate sizes, with the rule
``pull`` itself uses to choose (``fit.choose_quant``: the memory planner on this machine): the largest
instruction-tuned catalog model with a quantization that fits, so ``gemma-local pull MODEL``
then finds one that fits too. (``pull`` reads real sizes from the Hub; they match the
catalog's to a few percent.)
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_local.errors import GemmaLocalError, InsufficientMemoryError
from gemma_local.hub.catalog import Catalog, CatalogModel, load_catalog
from gemma_local.hub.fit import candidate, choose_quant
from gemma_local.hub.resolve import ResolvedModel
from gemma_local.hub.store import ModelStore
from gemma_local.hub.tuning import model_instruction_tuned
from gemma_local.memory import MachineMemory

__all__ = ["PullAdvice", "base_model_notice", "recommend_pull"]


@dataclass(frozen=True)
class PullAdvice:
    """The catalog model to pull for an assistant on this machine."""

    model: str
    quant: str  # what pull would choose for the same memory
    download_bytes: int  # approximate: model file + vision projector
    fits: bool  # False: nothing fits now; the smallest assistant is offered anyway

    @property
    def command(self) -> str:
        return f"gemma-local pull {self.model}"


def _sizes(model: CatalogModel) -> list[tuple[str, int]]:
    return [(quant, source.approx_bytes + (model.mmproj_approx_bytes or 0)) for quant, source in model.quants.items()]


def recommend_pull(machine: MachineMemory | None = None, catalog: Catalog | None = None) -> PullAdvice:
    """The largest instruction-tuned catalog model that fits ``machine``, by ``pull``'s rule.

    Args:
        machine: memory to plan for; default measured on this machine, as ``pull`` does.
        catalog: default the packaged one.

    Returns:
        The model and the quantization ``pull`` would choose; when none fits, the smallest
        model at its smallest quantization, with ``fits=False``.
    """
    catalog = catalog or load_catalog()
    machine = machine or MachineMemory.detect()
    tuned = [name for name, model in catalog.models.items() if model.instruction_tuned]
    # Largest first, by the smallest download each model has.
    tuned.sort(key=lambda name: min(size for _, size in _sizes(catalog.models[name])), reverse=True)
    for name in tuned:
        model = catalog.models[name]
        sizes = dict(_sizes(model))
        candidates = []
        for quant in catalog.quants_best_first(name):
            weights = model.quants[quant].approx_bytes
            candidates.append(candidate(quant, model.shape(name, weights), weights, model.mmproj_approx_bytes or 0))
        try:
            choice = choose_quant(candidates, machine=machine, model=name)
        except InsufficientMemoryError:
            continue
        return PullAdvice(name, choice.quant, sizes[choice.quant], fits=True)
    smallest = tuned[-1]
    quant, size = min(_sizes(catalog.models[smallest]), key=lambda item: item[1])
    return PullAdvice(smallest, quant, size, fits=False)


def base_model_notice(model: ResolvedModel, *, machine: MachineMemory | None = None) -> str | None:
    """One line for stderr when ``model`` is pre-trained, naming the ``pull`` that fits here.

    ``None`` for an instruction-tuned model, or one whose file cannot be read (the loader
    reports that). The CLI prints the line on stderr, never under ``--json``; the server never
    puts it in a response.

    Args:
        model: what ``--model`` resolved to.
        machine: memory to plan for; default measured on this machine.
    """
    if model_instruction_tuned(model) is not False:
        return None
    catalog = load_catalog()
    if model.embedded:
        what = f"{catalog.embedded.description} (not instruction-tuned), {catalog.embedded.purpose}"
    else:
        what = "pre-trained (not instruction-tuned): it continues text rather than answering"
    advice = recommend_pull(machine, catalog)
    if _in_store(advice.model):
        # `chat` and `generate` default to the embedded model even after a pull: say how to switch.
        return f"note: {model.id} is {what}. For an assistant: --model {advice.model} (already pulled)."
    size = f"≈{advice.download_bytes / 1e9:.1f} GB download"
    if not advice.fits:
        size += ", more memory than is free now"
    return f"note: {model.id} is {what}. For an assistant that fits this machine: {advice.command} ({size})."


def _in_store(name: str) -> bool:
    try:
        return ModelStore().find(name) is not None
    except GemmaLocalError:  # an unreadable registry is for `models` to report, not a notice
        return False
