"""The local model store: verified GGUF files plus a registry that names them.

Layout under ``home_dir()`` (``GEMMA_LOCAL_HOME``)::

    registry.json                      every registered model (written atomically, under a lock)
    store/ORG/REPO/COMMIT/FILE.gguf    pulled files, one folder per repo commit (split parts together)
    store/local/SHA256[:16]/FILE.gguf  files copied in by ``models import --copy``
    store/.partial/SHA256.part         downloads in progress, never listed or loaded

A file enters the registry only after its sha256 matched, so a partial or corrupt file is never
listed or loaded. Imported files may stay where they are (the default): ``rm`` then forgets
them without deleting them. This module never touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from gemma_local.errors import ModelNotFoundError, StoreError
from gemma_local.hub.catalog import CatalogRequest, HubRequest, load_catalog, parse_name
from gemma_local.paths import home_dir

__all__ = ["ModelStore", "StoreEntry", "StoredFile"]

REGISTRY = "registry.json"
SCHEMA = 1


class StoredFile(BaseModel):
    """One verified file of a registered model."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["model", "mmproj"]
    path: str = Field(description="Relative to the home dir for files the store owns, absolute for imports.")
    size: int
    sha256: str
    repo_path: str | None = Field(None, description="The file's path in its Hub repo.")


class StoreEntry(BaseModel):
    """A registered model: what ``models`` lists and what ``--model NAME`` loads."""

    model_config = ConfigDict(extra="ignore")

    name: str
    aliases: list[str] = Field(default_factory=list)
    source: Literal["hub", "import"]
    repo: str | None = None
    revision: str | None = Field(None, description="Commit sha the files came from.")
    quant: str | None = None
    files: list[StoredFile]
    vision: bool
    pulled_at: datetime
    managed: bool = Field(True, description="The store owns the files (rm deletes them).")
    _home: Path | None = PrivateAttr(default=None)

    def abspath(self, file: StoredFile) -> Path:
        """Where a file of this entry is on disk."""
        return (self._home or home_dir()) / file.path  # an absolute file.path wins over the home dir

    @property
    def model_files(self) -> list[StoredFile]:
        return [f for f in self.files if f.role == "model"]

    @property
    def path(self) -> Path:
        """The main GGUF (the first part of a split model)."""
        return self.abspath(self.model_files[0])

    @property
    def mmproj_path(self) -> Path | None:
        """The vision projector, when the model has one."""
        projector = next((f for f in self.files if f.role == "mmproj"), None)
        return self.abspath(projector) if projector else None

    @property
    def size_bytes(self) -> int:
        """Bytes on disk, projector included."""
        return sum(f.size for f in self.files)

    def summary(self) -> dict:
        """JSON-friendly view with absolute paths (for ``--json`` output)."""
        data = self.model_dump(mode="json")
        data["path"] = str(self.path)
        data["mmproj_path"] = str(self.mmproj_path) if self.mmproj_path else None
        data["size_bytes"] = self.size_bytes
        data["pulled_at"] = self.pulled_at.isoformat()  # same form as `models list --json`
        for stored, out in zip(self.files, data["files"], strict=True):
            out["path"] = str(self.abspath(stored))
        return data


class _Registry(BaseModel):
    schema_: int = Field(SCHEMA, alias="schema")
    models: list[StoreEntry] = Field(default_factory=list)


class ModelStore:
    """Pulled and imported models in ``home`` (default ``paths.home_dir()``)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else home_dir()
        self.files_dir = self.home / "store"
        self.partial_dir = self.files_dir / ".partial"
        self.registry_path = self.home / REGISTRY
        self._lock = FileLock(str(self.registry_path) + ".lock")

    # --- reading -----------------------------------------------------------------------

    def list(self) -> list[StoreEntry]:
        """Every registered model, sorted by name."""
        return sorted(self._load(), key=lambda e: e.name)

    def find(self, name: str) -> StoreEntry | None:
        """The entry answering to ``name``: its own name, an alias, or a catalog/hf.co name.

        ``gemma-3-4b`` finds the quantization last pulled under that name, else the best-quality
        one installed; ``hf.co/ORG/REPO`` finds the model pulled from that repo. Offline, fast.
        """
        entries = self._load()
        key = _normalise(name)
        for entry in entries:
            if _normalise(entry.name) == key:
                return entry
        for entry in entries:
            if key in (_normalise(a) for a in entry.aliases):
                return entry
        return self._find_by_request(entries, name)

    def get(self, name: str) -> StoreEntry:
        """Like ``find`` but raises ``ModelNotFoundError`` naming what is installed."""
        entry = self.find(name)
        if entry is None:
            names = ", ".join(e.name for e in self.list()) or "none"
            raise ModelNotFoundError(f"No model named {name!r} in the store (installed: {names}).")
        return entry

    def owners(self, path: Path) -> list[StoreEntry]:
        """Entries that reference ``path`` (projectors are shared between quants of one repo)."""
        target = path.resolve()
        return [e for e in self._load() if any(e.abspath(f).resolve() == target for f in e.files)]

    def file_record(self, path: Path) -> StoredFile | None:
        """The registry's record of a file, if any entry owns it (lets pull skip re-downloads)."""
        for entry in self.owners(path):
            for stored in entry.files:
                if entry.abspath(stored).resolve() == path.resolve():
                    return stored
        return None

    # --- where files go ---------------------------------------------------------------

    def blob_path(self, repo_id: str, commit: str, repo_path: str) -> Path:
        """Final location of a pulled file (split parts of one model share a folder, as llama.cpp needs)."""
        return self.files_dir.joinpath(*repo_id.split("/"), commit, *repo_path.split("/"))

    def partial_path(self, sha256: str) -> Path:
        """Where a download in progress accumulates; keyed by content so any revision can resume it."""
        return self.partial_dir / f"{sha256}.part"

    def relative(self, path: Path) -> str:
        """How the registry records a path: relative to home when inside it, absolute otherwise."""
        try:
            return path.resolve().relative_to(self.home.resolve()).as_posix()
        except ValueError:
            return str(path.resolve())

    # --- writing -----------------------------------------------------------------------

    def register(self, entry: StoreEntry, *, claim_aliases: bool = True) -> StoreEntry:
        """Add or replace ``entry`` atomically (a crash leaves the old registry intact).

        With ``claim_aliases``, the entry's aliases are taken away from any other entry, so
        ``gemma-3-27b`` always means the quantization pulled last under that name.
        """
        with self._lock:
            entries = [e for e in self._load() if _normalise(e.name) != _normalise(entry.name)]
            if claim_aliases:
                taken = {_normalise(a) for a in entry.aliases}
                for other in entries:
                    other.aliases = [a for a in other.aliases if _normalise(a) not in taken]
            clash = next((e for e in entries if _normalise(e.name) in {_normalise(a) for a in entry.aliases}), None)
            if clash is not None:
                entry.aliases = [a for a in entry.aliases if _normalise(a) != _normalise(clash.name)]
            entries.append(entry)
            self._save(entries)
        entry._home = self.home
        return entry

    def remove(self, name: str) -> tuple[StoreEntry, int, list[Path]]:
        """Unregister ``name`` and delete the files it alone owned.

        Returns:
            ``(entry, bytes_freed, kept)``: kept lists files left in place (imports, or shared
            with another entry).

        Raises:
            ModelNotFoundError: nothing by that name.
        """
        with self._lock:
            entry = self.get(name)
            others = [e for e in self._load() if e.name != entry.name]
            shared = {o.abspath(f).resolve() for o in others for f in o.files}
            # Forget first: a crash mid-delete leaves orphan files, never an entry with missing files.
            self._save(others)
        freed, kept = 0, []
        for stored in entry.files:
            path = entry.abspath(stored)
            if not entry.managed or path.resolve() in shared:
                kept.append(path)
                continue
            if path.exists():
                freed += path.stat().st_size
                path.unlink()
            self._prune_empty_dirs(path.parent)
        return entry, freed, kept

    def new_entry(self, **fields) -> StoreEntry:
        """A ``StoreEntry`` bound to this store's home, stamped now."""
        fields.setdefault("pulled_at", datetime.now(UTC))
        entry = StoreEntry(**fields)
        entry._home = self.home
        return entry

    # --- internals ---------------------------------------------------------------------

    def _load(self) -> list[StoreEntry]:
        try:
            text = self.registry_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            registry = _Registry.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as e:
            raise StoreError(
                f"The model registry {self.registry_path} is unreadable ({e.__class__.__name__}). Restore it "
                "from a backup, or delete it and pull or import the models again.",
                path=str(self.registry_path),
            ) from e
        for entry in registry.models:
            entry._home = self.home
        return registry.models

    def _save(self, entries: list[StoreEntry]) -> None:
        registry = _Registry(models=sorted(entries, key=lambda e: e.name))
        text = registry.model_dump_json(by_alias=True, indent=2)
        self.home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".registry-", suffix=".tmp", dir=self.home)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.registry_path)  # atomic: readers see the old or the new registry
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _prune_empty_dirs(self, folder: Path) -> None:
        root = self.files_dir.resolve()
        folder = folder.resolve()
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def _find_by_request(self, entries: list[StoreEntry], name: str) -> StoreEntry | None:
        try:
            request = parse_name(name)
        except ValueError:
            return None
        if isinstance(request, CatalogRequest):
            prefix = f"{request.model}:"
            matches = [e for e in entries if e.name.lower().startswith(prefix)]
            if request.quant is not None:
                return next((e for e in matches if e.quant == request.quant), None)
            order = load_catalog().quality_order
            matches.sort(key=lambda e: order.index(e.quant) if e.quant in order else len(order))
            return matches[0] if matches else None
        assert isinstance(request, HubRequest)
        from_repo = [e for e in entries if (e.repo or "").lower() == request.repo_id.lower()]
        if request.spec is not None:
            spec = request.spec.lower()
            from_repo = [
                e
                for e in from_repo
                if (e.quant or "").lower() == spec or any(Path(f.repo_path or "").name.lower() == spec for f in e.files)
            ]
        return max(from_repo, key=lambda e: e.pulled_at) if from_repo else None


def _normalise(name: str) -> str:
    lowered = name.strip().lower()
    for prefix in ("https://huggingface.co/", "https://hf.co/", "huggingface.co/"):
        if lowered.startswith(prefix):
            return "hf.co/" + lowered[len(prefix) :]
    if lowered.startswith("hf.co/") or ":" not in lowered:
        return lowered
    model, _, quant = lowered.partition(":")
    return f"{model}:{load_catalog().quant_aliases.get(quant, quant)}"


def copy_into(src: Path, dest: Path) -> None:
    """Copy a file so that ``dest`` appears complete or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.copying")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
