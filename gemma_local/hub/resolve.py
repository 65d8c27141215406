"""Turn what the user typed after ``--model`` into a GGUF path (never touching the network)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gemma_local.errors import ModelNotFoundError
from gemma_local.hub import embedded

_HUB_NAME_PREFIXES = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/")


@dataclass(frozen=True)
class ResolvedModel:
    """A local model ready to load."""

    id: str
    path: Path
    mmproj: Path | None = None
    embedded: bool = False


def resolve_model(name: str | None) -> ResolvedModel:
    """Find a model by path, by name in the local store, or the embedded default when ``None``.

    Raises:
        ModelNotFoundError: nothing local answers to ``name`` (the message says how to get it).
        EmbeddedModelMissingError: no name given and the embedded extra is not installed.
    """
    if name is None or name in (embedded.EMBEDDED_NAME, "embedded", "default"):
        return ResolvedModel(id=embedded.EMBEDDED_NAME, path=embedded.embedded_model_path(), embedded=True)
    if name.lower().startswith(_HUB_NAME_PREFIXES):
        # `hf.co/ORG/REPO:QUANT` contains slashes but names a pulled model, not a path.
        found = _lookup_store(name)
        if found is not None:
            return found
        raise ModelNotFoundError(f"{name!r} has not been pulled yet; download it with `gemma-local pull {name}`.")
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf" or path.exists() or "/" in name or "\\" in name:
        if not path.exists():
            raise ModelNotFoundError(f"Model file not found: {path}")
        return ResolvedModel(id=path.stem, path=path)
    found = _lookup_store(name)
    if found is not None:
        return found
    raise ModelNotFoundError(
        f"No local model named {name!r}. See `gemma-local models` for what is installed, "
        f"or download it with `gemma-local pull {name}`."
    )


def _lookup_store(name: str) -> ResolvedModel | None:
    try:
        from gemma_local.hub.store import ModelStore
    except ImportError:  # the store arrives with the downloader
        return None
    entry = ModelStore().find(name)
    if entry is None:
        return None
    if not entry.path.is_file():
        raise ModelNotFoundError(
            f"{entry.name} is registered but its file {entry.path} is missing. Run "
            f"`gemma-local models rm {entry.name}` and pull or import it again."
        )
    return ResolvedModel(id=entry.name, path=entry.path, mmproj=entry.mmproj_path)
