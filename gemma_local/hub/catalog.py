"""The catalog of Gemma 3 builds (``catalog.json``) and the names users type for them.

Three kinds of name reach ``pull`` and the store:

- ``gemma-3-27b``: a catalog model; the quantization is chosen to fit this machine.
- ``gemma-3-27b:q4_k_m``, ``gemma-3-4b:qat``: a catalog model at a named quantization.
- ``hf.co/ORG/REPO[:QUANT_OR_FILE]``: any GGUF repo on the Hub (``huggingface.co/`` works too).

The catalog is data, not code: adding a build means editing the JSON file only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

from gemma_local.errors import UnknownModelNameError
from gemma_local.memory import ModelShape
from gemma_local.memory.planner import GEMMA3_SWA_PATTERN

__all__ = [
    "Architecture",
    "Catalog",
    "CatalogModel",
    "CatalogRequest",
    "EmbeddedEntry",
    "HubRequest",
    "QuantSource",
    "load_catalog",
    "parse_name",
]

_HUB_PREFIXES = ("https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatedSource(_Strict):
    """Google's own, licence-gated repo for the same weights."""

    repo: str
    files: list[str] = Field(min_length=1)
    mmproj: str | None = None


class QuantSource(_Strict):
    """Where one quantization of one model lives on the Hub."""

    repo: str
    files: list[str] = Field(min_length=1, description="Main GGUF, or every part of a split GGUF in order.")
    mmproj: str | None = Field(None, description="Vision projector in the same repo.")
    approx_bytes: int = Field(gt=0, description="For display only; pull reads real sizes from the Hub.")
    gated: GatedSource | None = None


class Architecture(_Strict):
    """The published shape of a model (its ``config.json``): what memory depends on besides the weights."""

    layers: int = Field(gt=0)
    embedding_length: int = Field(gt=0)
    feed_forward_length: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    sliding_window: int = Field(ge=0)
    vocab: int = Field(gt=0)


class CatalogModel(_Strict):
    """One Gemma 3 size and the quantizations published for it."""

    description: str
    instruction_tuned: bool = Field(
        True, description="An assistant (chat-tuned) build; only these are offered as the next model to pull."
    )
    vision: bool
    mmproj_approx_bytes: int | None = Field(
        None, gt=0, description="Vision projector size, for display and the offline pull advice only."
    )
    context_length: int = Field(gt=0)
    architecture: Architecture
    quants: dict[str, QuantSource]

    def shape(self, name: str, weights_bytes: int) -> ModelShape:
        """The memory planner's view of this model at one quantization (``weights_bytes`` of GGUF).

        The same numbers ``ModelShape.from_gguf`` reads from the file once it is downloaded.
        """
        a = self.architecture
        return ModelShape(
            name=name,
            architecture="gemma3",
            weights_bytes=weights_bytes,
            n_layer=a.layers,
            n_embd=a.embedding_length,
            n_ff=a.feed_forward_length,
            n_head=a.heads,
            n_head_kv=a.kv_heads,
            head_dim_k=a.head_dim,
            head_dim_v=a.head_dim,
            n_swa=a.sliding_window,
            swa_pattern=GEMMA3_SWA_PATTERN,
            n_ctx_train=self.context_length,
            n_vocab=a.vocab,
        )


class EmbeddedEntry(_Strict):
    """What the embedded default model is, known without assembling its file."""

    name: str
    description: str = Field(description="What it is, e.g. 'Gemma 3 270M pre-trained'.")
    instruction_tuned: bool
    purpose: str = Field(description="What it is for, completing a sentence about it.")


class Catalog(_Strict):
    """The whole ``catalog.json``."""

    schema_: int = Field(alias="schema")
    about: str
    quality_order: list[str] = Field(description="Best quality first; the automatic choice walks it.")
    quant_aliases: dict[str, str]
    quant_labels: dict[str, str]
    embedded: EmbeddedEntry
    models: dict[str, CatalogModel]

    def quant_tag(self, raw: str) -> str:
        """Normalise what a user typed after ``:`` (``Q4_K_M`` → ``q4_k_m``, ``q4_0`` → ``qat``)."""
        tag = raw.strip().lower()
        return self.quant_aliases.get(tag, tag)

    def quants_best_first(self, model: str) -> list[str]:
        """The quantizations published for ``model``, best quality first."""
        published = self.models[model].quants
        return [q for q in self.quality_order if q in published]

    def label(self, quant: str) -> str:
        return self.quant_labels.get(quant, quant.upper())

    def mirror_for(self, repo_id: str) -> str | None:
        """The ungated catalog name serving the same weights as a gated repo, if any."""
        for name, model in self.models.items():
            for quant, source in model.quants.items():
                if source.gated is not None and source.gated.repo.lower() == repo_id.lower():
                    return f"{name}:{quant}"
        return None

    def names(self) -> list[str]:
        return list(self.models)


@cache
def load_catalog() -> Catalog:
    """The catalog shipped with the package (read once)."""
    text = resources.files("gemma_local.hub").joinpath("catalog.json").read_text(encoding="utf-8")
    return Catalog.model_validate(json.loads(text))


@dataclass(frozen=True)
class CatalogRequest:
    """A catalog model, with a quantization or ``None`` to choose one that fits."""

    model: str
    quant: str | None = None

    @property
    def name(self) -> str:
        return self.model if self.quant is None else f"{self.model}:{self.quant}"

    def with_quant(self, quant: str) -> CatalogRequest:
        return CatalogRequest(self.model, quant)


@dataclass(frozen=True)
class HubRequest:
    """Any GGUF repo on the Hub; ``spec`` is a file name or a quant tag found in file names."""

    repo_id: str
    spec: str | None = None

    @property
    def name(self) -> str:
        return f"hf.co/{self.repo_id}" + (f":{self.spec}" if self.spec else "")


def parse_name(name: str, catalog: Catalog | None = None) -> CatalogRequest | HubRequest:
    """Parse a model name as typed after ``pull`` (or ``--model``).

    Raises:
        UnknownModelNameError: not a catalog model, a catalog quantization, or an ``hf.co`` name.
    """
    catalog = catalog or load_catalog()
    raw = name.strip()
    lowered = raw.lower()
    for prefix in _HUB_PREFIXES:
        if lowered.startswith(prefix):
            return _parse_hub(raw[len(prefix) :], raw, catalog)
    model, _, quant = lowered.partition(":")
    if model not in catalog.models:
        raise UnknownModelNameError(raw, catalog.names())
    if not quant:
        return CatalogRequest(model)
    tag = catalog.quant_tag(quant)
    if tag not in catalog.models[model].quants:
        published = ", ".join(f"{model}:{q}" for q in catalog.quants_best_first(model))
        raise UnknownModelNameError(raw, catalog.names(), hint=f"Published quantizations: {published}.")
    return CatalogRequest(model, tag)


def _parse_hub(rest: str, raw: str, catalog: Catalog) -> HubRequest:
    repo_part, _, spec = rest.partition(":")
    repo_id = repo_part.strip("/")
    for marker in ("/resolve/", "/blob/", "/tree/"):
        repo_id = repo_id.split(marker, 1)[0]  # a pasted file URL still names its repo
    if not _REPO_ID.match(repo_id):
        raise UnknownModelNameError(raw, catalog.names())
    return HubRequest(repo_id, spec.strip() or None)
