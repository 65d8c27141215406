"""What ``pull NAME`` would do: which repo, commit, files and quantization, and whether it fits.

``plan_pull`` reads only the Hub's metadata (sizes, sha256, commit) and the local disk; nothing
is downloaded. ``pull --dry-run`` prints the plan; ``pull`` hands it to ``download.pull``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gemma_local.errors import DownloadError, GatedRepoError, RemoteNotFoundError, UnknownModelNameError
from gemma_local.hub import select
from gemma_local.hub.catalog import CatalogModel, CatalogRequest, HubRequest, QuantSource, load_catalog, parse_name
from gemma_local.hub.fit import Candidate, QuantChoice, candidate, check_fit, choose_quant
from gemma_local.hub.remote import HubClient, RemoteFile, RemoteRepo
from gemma_local.hub.store import ModelStore
from gemma_local.memory import MachineMemory

__all__ = ["PlannedFile", "PullPlan", "plan_pull"]

# Kept free after the download so the disk is never filled to the last byte.
DISK_MARGIN = 256 * 2**20
# A size class in a repo or file name: 27b, 12b, 4b, 1b, 270m (not 14b's "4b").
_SIZE_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?[bm])(?![a-z0-9])")
_QUANT_IN_NAME = re.compile(r"(?<![a-z0-9])(i?q\d(?:_[a-z0-9]+)*|bf16|f16|f32)(?=[-.])", re.IGNORECASE)


@dataclass(frozen=True)
class PlannedFile:
    """One file to fetch (or already in the store)."""

    role: Literal["model", "mmproj"]
    remote: RemoteFile
    dest: Path
    have_bytes: int  # already on disk from an interrupted download (or the whole file when stored)
    stored: bool  # already in the store and verified: nothing to fetch

    @property
    def expected_digest(self) -> str:
        return self.remote.sha256 or self.remote.blob_id or ""


@dataclass(frozen=True)
class PullPlan:
    """Everything ``pull`` needs, decided before the first byte is fetched."""

    name: str
    aliases: tuple[str, ...]
    repo_id: str
    commit: str
    quant: str | None
    vision: bool
    files: tuple[PlannedFile, ...]
    choice: QuantChoice | None
    warning: str | None
    store_dir: Path
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(f.remote.size for f in self.files)

    @property
    def download_bytes(self) -> int:
        """Bytes still to fetch (stored files and resumed prefixes excluded)."""
        return sum(f.remote.size - f.have_bytes for f in self.files if not f.stored)

    @property
    def disk_needed(self) -> int:
        return self.download_bytes + DISK_MARGIN if self.download_bytes else 0

    @property
    def fits_disk(self) -> bool:
        return self.free_bytes >= self.disk_needed

    def as_dict(self) -> dict:
        """JSON-friendly view (``pull --dry-run --json``)."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "repo": self.repo_id,
            "revision": self.commit,
            "quant": self.quant,
            "vision": self.vision,
            "files": [
                {
                    "role": f.role,
                    "path": f.remote.path,
                    "size": f.remote.size,
                    "sha256": f.remote.sha256,
                    "have_bytes": f.have_bytes,
                    "stored": f.stored,
                    "dest": str(f.dest),
                }
                for f in self.files
            ],
            "total_bytes": self.total_bytes,
            "download_bytes": self.download_bytes,
            "free_bytes": self.free_bytes,
            "fits_disk": self.fits_disk,
            "choice": None
            if self.choice is None
            else {
                "quant": self.choice.quant,
                "required_bytes": self.choice.required_bytes,
                "available_bytes": self.choice.machine.budget,
                "memory_source": self.choice.machine.describe_budget(),
                "reason": self.choice.reason,
            },
            "warning": self.warning,
        }


def plan_pull(
    name: str,
    *,
    revision: str | None = None,
    machine: MachineMemory | None = None,
    client: HubClient | None = None,
    store: ModelStore | None = None,
) -> PullPlan:
    """Decide what pulling ``name`` means, reading only metadata.

    Args:
        name: ``gemma-3-27b``, ``gemma-3-27b:q4_k_m`` or ``hf.co/ORG/REPO[:QUANT_OR_FILE]``.
        revision: commit sha (or branch/tag) to pin; default the repo's main branch.
        machine: the memory to plan for; default measured on this machine.
        client: Hub access; default ``HubClient()`` (``HF_ENDPOINT``, ``HF_TOKEN``).
        store: where the files will go; default ``ModelStore()``.

    Raises:
        UnknownModelNameError, RemoteNotFoundError, GatedRepoError, OfflineError,
        InsufficientMemoryError (automatic choice and nothing fits).
    """
    client = client or HubClient()
    store = store or ModelStore()
    request = parse_name(name)
    if isinstance(request, CatalogRequest):
        return _plan_catalog(request, revision, machine, client, store)
    return _plan_hub(request, revision, machine, client, store)


def _plan_catalog(
    request: CatalogRequest,
    revision: str | None,
    machine: MachineMemory | None,
    client: HubClient,
    store: ModelStore,
) -> PullPlan:
    catalog = load_catalog()
    model = catalog.models[request.model]
    choice: QuantChoice | None = None
    warning: str | None = None
    aliases: tuple[str, ...] = ()
    if request.quant is None:
        if revision is not None:
            raise UnknownModelNameError(
                request.model,
                catalog.names(),
                hint=f"A revision belongs to one repo: name the quantization too, e.g. '{request.model}:qat'.",
            )
        machine = machine or MachineMemory.detect()
        candidates = []
        for quant in catalog.quants_best_first(request.model):
            source = model.quants[quant]
            try:
                repo = client.repo(source.repo)
                files = _catalog_files(repo, source, quant)
            except RemoteNotFoundError:
                continue  # a third-party repo was removed or renamed: choose among the rest
            candidates.append(_candidate(quant, model, request.model, repo, files))
        if not candidates:
            raise RemoteNotFoundError(
                f"None of the repos the catalog names for {request.model} answered; update gemma-local, "
                "or pull a GGUF repo directly as hf.co/ORG/REPO:QUANT.",
                repo_id=model.quants[catalog.quants_best_first(request.model)[0]].repo,
            )
        choice = choose_quant(candidates, machine=machine, model=request.model)
        quant = choice.quant
        aliases = (request.model,)  # `gemma-3-27b` now means this quantization
    else:
        quant = request.quant
    source = model.quants[quant]
    repo = client.repo(source.repo, revision)
    files = _catalog_files(repo, source, quant)
    if choice is None:
        name = f"{request.model}:{quant}"
        warning = check_fit(
            name, _candidate(quant, model, name, repo, files), machine=machine or MachineMemory.detect()
        )
    return _finish(
        name=f"{request.model}:{quant}",
        aliases=aliases,
        repo=repo,
        quant=quant,
        files=files,
        choice=choice,
        warning=warning,
        store=store,
        client=client,
    )


def _candidate(
    quant: str | None, model: CatalogModel, name: str, repo: RemoteRepo, files: list[tuple[str, str]]
) -> Candidate:
    """What the planner needs of one quantization: the model's shape at these files' sizes."""
    weights = sum(repo.files[p].size for role, p in files if role == "model")
    projector = sum(repo.files[p].size for role, p in files if role == "mmproj")
    return candidate(quant or "", model.shape(name, weights), weights, projector)


def _catalog_files(repo: RemoteRepo, source: QuantSource, quant: str) -> list[tuple[str, str]]:
    paths = list(repo.files)
    if all(f in repo.files for f in source.files):
        model_files = list(source.files)
    else:
        # The repo renamed its files since the catalog was written: find the quant by its tag.
        tag = "q4_0" if quant == "qat" else quant
        found = select.select_by_tag(paths, tag)
        if len(found) != 1:
            raise RemoteNotFoundError(
                f"{repo.repo_id} no longer has {source.files[0]} (it has: {select.describe(paths)}). "
                "Pull it by file name as hf.co/REPO:FILE, or update gemma-local.",
                repo_id=repo.repo_id,
                revision=repo.commit,
                path=source.files[0],
            )
        model_files = list(found[0].files)
    chosen = [("model", p) for p in model_files]
    mmproj = source.mmproj if source.mmproj in repo.files else select.find_mmproj(paths, near=model_files[0])
    if source.mmproj is not None and mmproj is not None:
        chosen.append(("mmproj", mmproj))
    return chosen


def _plan_hub(
    request: HubRequest,
    revision: str | None,
    machine: MachineMemory | None,
    client: HubClient,
    store: ModelStore,
) -> PullPlan:
    repo = client.repo(request.repo_id, revision)
    paths = list(repo.files)
    spec = request.spec
    if spec is not None and spec.lower().endswith(".gguf"):
        model = select.select_file(paths, spec)
        if model is None:
            raise RemoteNotFoundError(
                f"{repo.repo_id} has no file {spec!r} (it has: {select.describe(paths)}).",
                repo_id=repo.repo_id,
                revision=repo.commit,
                path=spec,
            )
    elif spec is not None:
        found = select.select_by_tag(paths, spec)
        if len(found) != 1:
            what = "no GGUF" if not found else f"{len(found)} GGUFs"
            raise RemoteNotFoundError(
                f"{repo.repo_id} has {what} tagged {spec!r} (it has: {select.describe(paths)}); "
                "name the file instead: hf.co/ORG/REPO:FILE.gguf.",
                repo_id=repo.repo_id,
                revision=repo.commit,
            )
        model = found[0]
    else:
        picked = select.select_default(paths)
        if picked is None:
            raise RemoteNotFoundError(
                f"{repo.repo_id} holds {select.describe(paths)}; pick one with hf.co/{repo.repo_id}:QUANT "
                "(e.g. :Q4_K_M) or :FILE.gguf.",
                repo_id=repo.repo_id,
                revision=repo.commit,
            )
        model = picked
    files = [("model", p) for p in model.files]
    mmproj = select.find_mmproj(paths, near=model.first)
    if mmproj is not None:
        files.append(("mmproj", mmproj))
    quant = spec.lower() if spec and not spec.lower().endswith(".gguf") else _quant_from_filename(model.first)
    shape_of = _architecture_from_name(f"{repo.repo_id}/{model.first}")
    warning = check_fit(
        request.name,
        _candidate(quant, shape_of, request.name, repo, files),
        machine=machine or MachineMemory.detect(),
    )
    return _finish(
        name=request.name,
        aliases=(),
        repo=repo,
        quant=quant,
        files=files,
        choice=None,
        warning=warning,
        store=store,
        client=client,
    )


def _architecture_from_name(text: str) -> CatalogModel:
    """The catalog model whose size class the repo or file name carries (``…-27b-…`` → 27B).

    Before a download only the name is known; without a size class in it, the shape with the most
    KV cache per token (27B) is assumed, the conservative guess for a warning.
    """
    models = load_catalog().models
    by_size = {name.rsplit("-", 1)[-1]: model for name, model in models.items()}
    for token in _SIZE_IN_NAME.findall(text.lower()):
        if token in by_size:
            return by_size[token]
    return max(models.values(), key=lambda m: m.architecture.layers * m.architecture.kv_heads * m.architecture.head_dim)


def _quant_from_filename(path: str) -> str | None:
    match = _QUANT_IN_NAME.search(path.rsplit("/", 1)[-1])
    return match.group(1).lower() if match else None


def _finish(
    *,
    name: str,
    aliases: tuple[str, ...],
    repo: RemoteRepo,
    quant: str | None,
    files: list[tuple[str, str]],
    choice: QuantChoice | None,
    warning: str | None,
    store: ModelStore,
    client: HubClient,
) -> PullPlan:
    if repo.gated and not client.has_token:
        # Known before the first byte: say so now rather than after "Pulling …".
        raise GatedRepoError(repo.repo_id, has_token=False, mirror=load_catalog().mirror_for(repo.repo_id))
    planned = []
    for role, path in files:
        remote = repo.files[path]
        if not (remote.sha256 or remote.blob_id):
            raise DownloadError(
                f"The Hub gave no checksum for {repo.repo_id}/{path}; refusing to download unverifiable weights.",
                repo_id=repo.repo_id,
                path=path,
            )
        dest = store.blob_path(repo.repo_id, repo.commit, path)
        record = store.file_record(dest) if dest.exists() else None
        stored = record is not None and record.size == remote.size and record.sha256 == remote.sha256
        partial = store.partial_path(remote.sha256 or remote.blob_id or "")
        have = remote.size if stored else min(partial.stat().st_size, remote.size) if partial.exists() else 0
        planned.append(PlannedFile(role, remote, dest, have, stored))  # type: ignore[arg-type]
    return PullPlan(
        name=name,
        aliases=aliases,
        repo_id=repo.repo_id,
        commit=repo.commit,
        quant=quant,
        vision=any(f.role == "mmproj" for f in planned),
        files=tuple(planned),
        choice=choice,
        warning=warning,
        store_dir=store.files_dir,
        free_bytes=_free_bytes(store.files_dir),
    )


def _free_bytes(folder: Path) -> int:
    # The store folder may not exist yet: ask the nearest existing ancestor (same filesystem).
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            return shutil.disk_usage(ancestor).free
    return shutil.disk_usage(Path.cwd()).free
