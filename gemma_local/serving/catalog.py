"""Which models a server offers, and which one a request's ``model`` names.

Two kinds of catalog:

- **one model** (``serve --model X``, or an app built around one engine): the model answers
  to the ids :class:`~gemma_local.pipeline.model_ids.ServedModels` gives it (its own, its
  family's, the hosted ``gemma-3-27b``); anything else is a 404, as before;
- **the store** (``serve`` with no ``--model``): every model in the local store plus the
  embedded default. A request's ``model`` is looked up, first match wins, as

  1. a ``--model-alias NAME=MODEL`` (``gpt-4o=gemma-3-12b``), whose MODEL is looked up below;
  2. a model's own id (store name, ``gemma-3-270m-embedded``);
  3. anything the store itself answers to (its aliases, ``gemma-3-4b:q4_0``, ``hf.co/…``);
  4. a file name, with or without ``.gguf``;
  5. a family id from the GGUF header (``gemma-3-4b``, ``-it``, ``-pt``): the best model of that
     family (instruction-tuned first, then the largest file);
  6. the hosted id ``gemma-3-27b`` with no 27B pulled: the default model, and the
     :class:`Resolution` says so, so the server can state the substitution.

A name not found is looked up once more after re-reading the store, so a model pulled while
the server runs is served without a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gemma_local.errors import GemmaLocalError, InvalidRequestError, ModelNotFoundError
from gemma_local.pipeline.model_ids import HOSTED_ID, ServedModels, family_id

__all__ = ["ModelCatalog", "ModelEntry", "Resolution", "parse_aliases"]

logger = logging.getLogger("gemma_local.serving")


@dataclass(frozen=True)
class ModelEntry:
    """A model the server can load.

    Attributes:
        id: its own id: the store name, ``gemma-3-270m-embedded``, or a file's stem.
        path: the GGUF file.
        mmproj: its vision projector, when it has one.
        aliases: other names the store gives it.
        family: ``gemma-3-4b`` from the GGUF header, when it says.
        instruction_tuned: from the GGUF header (``None``: unreadable).
        size_bytes: the file's size.
        embedded: the embedded default model.
    """

    id: str
    path: Path
    mmproj: Path | None = None
    aliases: tuple[str, ...] = ()
    family: str | None = None
    instruction_tuned: bool | None = None
    size_bytes: int = 0
    embedded: bool = False


@dataclass(frozen=True)
class Resolution:
    """Which model a request gets.

    Attributes:
        entry: the model.
        requested: the id the request named.
        substituted: the request named a model that is not here (the hosted ``gemma-3-27b``)
            and gets ``entry``, the default, instead; the server states it.
    """

    entry: ModelEntry
    requested: str
    substituted: bool = False


def parse_aliases(pairs: Sequence[str]) -> dict[str, str]:
    """``["gpt-4o=gemma-3-12b"]`` → ``{"gpt-4o": "gemma-3-12b"}`` (names compared lower-cased).

    Raises:
        InvalidRequestError: a pair without ``=`` or with an empty side.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, target = pair.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise InvalidRequestError(f"Invalid model alias {pair!r}: write NAME=MODEL, e.g. gpt-4o=gemma-3-12b.")
        out[name.strip().lower()] = target.strip()
    return out


@dataclass
class ModelCatalog:
    """The models one server offers (see the module docstring).

    Args:
        entries: the models, the default first.
        aliases: ``--model-alias`` names → a model's name.
        single: serve only the first entry, with the one-model id rules.
        reload: reads the entries again (the store); ``None``: they never change.
        store_home: the store to look names up in (``None``: no store lookups).
    """

    entries: list[ModelEntry]
    aliases: Mapping[str, str] = field(default_factory=dict)
    single: bool = False
    reload: Callable[[], list[ModelEntry]] | None = None
    store_home: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def one(
        cls, entry: ModelEntry, metadata: Mapping[str, str], aliases: Mapping[str, str] | None = None
    ) -> ModelCatalog:
        """A catalog of one loaded model (its family read from ``metadata``)."""
        family = entry.family or family_id(dict(metadata))
        return cls([ModelEntry(**{**entry.__dict__, "family": family})], dict(aliases or {}), single=True)

    @classmethod
    def from_store(cls, aliases: Mapping[str, str] | None = None, home: Path | None = None) -> ModelCatalog:
        """Every model in the store plus the embedded default (see :func:`store_entries`).

        Args:
            aliases: ``--model-alias`` names → a model's name.
            home: the store's home (default: ``GEMMA_LOCAL_HOME`` now, kept for later lookups).
        """
        from gemma_local.paths import home_dir

        home = home or home_dir()
        return cls(store_entries(home), dict(aliases or {}), reload=lambda: store_entries(home), store_home=home)

    @property
    def default(self) -> ModelEntry:
        """The model the hosted id falls back to.

        Raises:
            ModelNotFoundError: the catalog is empty (nothing pulled, no embedded model).
        """
        if not self.entries:
            raise ModelNotFoundError(
                "No model to serve: the store is empty and the embedded model is not installed. Pull one with "
                "`gemma-local pull gemma-3-4b`."
            )
        return self.entries[0]

    def get(self, model_id: str) -> ModelEntry | None:
        """The entry whose own id is ``model_id``."""
        return next((e for e in self.entries if e.id == model_id), None)

    def resolve(self, requested: str) -> Resolution:
        """The model a request naming ``requested`` gets.

        Raises:
            ModelNotFoundError: nothing here answers to it (HTTP 404, listing what is served).
        """
        found = self._resolve(requested)
        if found is None and self.reload is not None:
            self.refresh()
            found = self._resolve(requested)
        if found is not None:
            return found
        if self.single:
            # The one-model message (names the ids it answers to and how to serve another).
            ServedModels(self.entries[0].id, {}).check(requested)
        served = ", ".join(repr(e.id) for e in self.entries) or "none"
        raise ModelNotFoundError(
            f"The model '{requested}' does not exist on this server. It serves {served} (see /v1/models); "
            f"`gemma-local pull {requested}` downloads a model the catalog knows."
        )

    def ids_of(self, entry: ModelEntry) -> list[str]:
        """Every id ``entry`` answers to here: its own first, then aliases and family ids."""
        ids = [entry.id, *entry.aliases]
        ids += [name for name, target in self.aliases.items() if self._match(target) is entry]
        if entry.family is not None and self._best_of_family(entry.family) is entry:
            ids += [entry.family, f"{entry.family}-it", f"{entry.family}-pt"]
        if entry is self._hosted_target():
            ids.append(HOSTED_ID)
        return list(dict.fromkeys(ids))

    def refresh(self) -> None:
        """Read the entries again (a model pulled or removed since)."""
        if self.reload is None:
            return
        try:
            entries = self.reload()
        except GemmaLocalError as e:  # an unreadable registry: keep serving what we had
            logger.warning("could not re-read the model store: %s", e.message)
            return
        with self._lock:
            self.entries = entries

    # --- lookup ------------------------------------------------------------------------

    def _resolve(self, requested: str) -> Resolution | None:
        key = requested.strip().lower()
        target = self.aliases.get(key)
        if target is not None:
            entry = self._match(target)
            if entry is None:
                raise ModelNotFoundError(
                    f"The alias '{requested}' names '{target}', which is not in the store (see `gemma-local models`)."
                )
            return Resolution(entry, requested)
        entry = self._match(requested)
        if entry is not None:
            return Resolution(entry, requested)
        if key == HOSTED_ID and self.entries:
            return Resolution(self.default, requested, substituted=True)
        return None

    def _match(self, name: str) -> ModelEntry | None:
        key = name.strip().lower()
        entries = self.entries
        for rule in (
            lambda e: e.id.lower() == key,
            lambda e: key in (a.lower() for a in e.aliases),
            lambda e: key in (e.path.name.lower(), e.path.stem.lower()),
        ):
            found = next((e for e in entries if rule(e)), None)
            if found is not None:
                return found
        if self.single:
            entry = entries[0]
            return entry if key in self._family_ids(entry) else None
        found = self._store_find(name)
        if found is not None:
            return found
        family = key.removesuffix("-it").removesuffix("-pt")
        best = self._best_of_family(family)
        return best if best is not None and key in self._family_ids(best) else None

    def _store_find(self, name: str) -> ModelEntry | None:
        if self.store_home is None:
            return None
        from gemma_local.hub.store import ModelStore

        try:
            stored = ModelStore(self.store_home).find(name)
        except GemmaLocalError:
            return None
        return self.get(stored.name) if stored is not None else None

    @staticmethod
    def _family_ids(entry: ModelEntry) -> tuple[str, ...]:
        if entry.family is None:
            return ()
        return (entry.family, f"{entry.family}-it", f"{entry.family}-pt")

    def _best_of_family(self, family: str) -> ModelEntry | None:
        members = [e for e in self.entries if e.family == family]
        if not members:
            return None
        return max(members, key=lambda e: (e.instruction_tuned is True, e.size_bytes))

    def _hosted_target(self) -> ModelEntry | None:
        if not self.entries:
            return None
        return self._match(HOSTED_ID) or self.default


def store_entries(home: Path | None = None) -> list[ModelEntry]:
    """Every model in the store at ``home``, the largest first (the default), then the embedded one.

    The largest stored model is the default, as ``serve`` with no ``--model`` has always
    chosen; with an empty store the embedded model is.
    """
    from gemma_local.hub import embedded
    from gemma_local.hub.store import ModelStore

    stored: list[ModelEntry] = []
    for entry in ModelStore(home).list():
        if not entry.path.is_file():
            logger.warning("%s is registered but its file %s is missing: not served", entry.name, entry.path)
            continue
        family, tuned = _header(entry.path)
        stored.append(
            ModelEntry(
                id=entry.name,
                path=entry.path,
                mmproj=entry.mmproj_path,
                aliases=tuple(entry.aliases),
                family=family,
                instruction_tuned=tuned,
                size_bytes=entry.size_bytes,
            )
        )
    stored.sort(key=lambda e: e.size_bytes, reverse=True)
    if embedded.is_installed():
        path = embedded.embedded_model_path()
        family, tuned = _header(path)
        stored.append(
            ModelEntry(
                id=embedded.EMBEDDED_NAME,
                path=path,
                family=family,
                instruction_tuned=tuned,
                size_bytes=path.stat().st_size,
                embedded=True,
            )
        )
    return stored


def _header(path: Path) -> tuple[str | None, bool | None]:
    """(family id, instruction-tuned) from a GGUF's header; ``(None, None)`` when unreadable."""
    from gemma_local.gguf import read_gguf_metadata
    from gemma_local.hub.tuning import is_instruction_tuned

    try:
        metadata = read_gguf_metadata(path)
    except (OSError, ValueError, GemmaLocalError):
        return None, None
    text = {k: v for k, v in metadata.items() if isinstance(v, str)}
    return family_id(text), is_instruction_tuned(metadata)
