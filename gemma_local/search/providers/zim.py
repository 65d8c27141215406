"""The ``zim`` provider: offline web archives (Kiwix ZIM files such as Wikipedia).

Archives are registered with ``gemma-local index add-zim FILE``; the list lives in
``GEMMA_LOCAL_HOME/zim-archives.json``. Searching uses the archive's own full-text (Xapian)
index through ``libzim`` (the ``search`` extra); an archive built without one is searched by
title suggestions instead. libzim's query parser ANDs every word, so a question is first
searched with all of its keywords, then, when that finds too little, keyword by keyword, and
the pages matching the most keywords win. The snippet is the passage of the page that holds
the most query words. Each result's URL is ``zim://ARCHIVE-FILE-NAME/ENTRY-PATH``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gemma_local.errors import MissingDependencyError, ProviderUnavailableError, ZimArchiveError
from gemma_local.search.text import best_passage, html_to_text, keywords, normalize_text
from gemma_local.search.types import Source

_PROVIDER = "zim"
_NO_ARCHIVES_HINT = "no ZIM archives are registered; add one with `gemma-local index add-zim FILE`"
#: Pages per keyword looked at when relaxing a query.
_PER_TERM = 20
_MAX_PAGE_CHARS = 400_000


@dataclass(frozen=True, slots=True)
class ZimInfo:
    """A registered archive."""

    path: str
    title: str
    articles: int
    fulltext: bool
    size_bytes: int
    added_at: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _libzim() -> Any:
    try:
        import libzim.reader
        import libzim.search
        import libzim.suggestion
    except ImportError as e:
        raise MissingDependencyError("libzim", provider=_PROVIDER) from e
    return libzim


class ZimLibrary:
    """The registry of ZIM archives, a small JSON file.

    Args:
        registry: The JSON file (created on the first ``add``).
    """

    def __init__(self, registry: Path) -> None:
        self.registry = Path(registry)

    def archives(self) -> list[ZimInfo]:
        """The registered archives, in the order they were added."""
        try:
            data = json.loads(self.registry.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        return [ZimInfo(**item) for item in data.get("archives", [])]

    def add(self, path: str | Path) -> ZimInfo:
        """Open and register an archive (registering it again refreshes its details).

        Raises:
            MissingDependencyError: ``libzim`` is not installed.
            ZimArchiveError: The file is missing or not a readable ZIM archive.
        """
        target = Path(path).expanduser().resolve()
        archive = _open_archive(target)
        info = ZimInfo(
            path=str(target),
            title=_metadata(archive, "Title") or target.stem,
            articles=int(archive.article_count),
            fulltext=bool(archive.has_fulltext_index),
            size_bytes=target.stat().st_size,
            added_at=time.time(),
        )
        archives = [a for a in self.archives() if a.path != info.path] + [info]
        self._save(archives)
        return info

    def remove(self, path: str | Path) -> bool:
        """Unregister an archive (the file stays); ``False`` when it was not registered."""
        key = str(Path(path).expanduser().resolve())
        archives = self.archives()
        kept = [a for a in archives if a.path != key]
        if len(kept) == len(archives):
            return False
        self._save(kept)
        return True

    def _save(self, archives: list[ZimInfo]) -> None:
        self.registry.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.registry.with_name(self.registry.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"archives": [a.as_dict() for a in archives]}, indent=2), encoding="utf-8")
            tmp.replace(self.registry)  # atomic: a reader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)


class ZimProvider:
    """The ``zim`` search provider over every archive in a :class:`ZimLibrary`."""

    name = _PROVIDER

    def __init__(self, library: ZimLibrary) -> None:
        self.library = library
        self._archives: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def search(self, query: str, *, limit: int, timeout: float) -> list[Source]:
        """Search every registered archive; results are interleaved archive by archive."""
        infos = self.library.archives()
        if not infos:
            raise ProviderUnavailableError(_NO_ARCHIVES_HINT, provider=self.name)
        lib = _libzim()
        terms = keywords(query)
        if not terms:
            return []
        deadline = time.monotonic() + timeout
        per_archive: list[list[Source]] = []
        missing: list[str] = []
        for info in infos:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ZIM search took longer than {timeout}s")
            try:
                archive = self._archive(info.path)
            except ZimArchiveError:
                missing.append(info.path)
                continue
            per_archive.append(_search_archive(lib, archive, Path(info.path).name, terms, limit))
        if missing and not per_archive:
            raise ProviderUnavailableError(
                f"the registered ZIM archives cannot be opened: {', '.join(missing)}", provider=self.name
            )
        return _interleave(per_archive, limit)

    def _archive(self, path: str) -> Any:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError as e:
            raise ZimArchiveError(f"{path}: {e.strerror}", path=path) from e
        key = (path, mtime)
        with self._lock:  # libzim archives are safe to share for reading; opening is not free
            archive = self._archives.get(key)
            if archive is None:
                archive = _open_archive(Path(path))
                self._archives = {k: v for k, v in self._archives.items() if k[0] != path}
                self._archives[key] = archive
            return archive


def _open_archive(path: Path) -> Any:
    lib = _libzim()
    if not path.is_file():
        raise ZimArchiveError(f"{path}: no such file.", path=str(path))
    try:
        return lib.reader.Archive(path)
    except RuntimeError as e:
        raise ZimArchiveError(f"{path} is not a readable ZIM archive ({e}).", path=str(path)) from e


def _metadata(archive: Any, name: str) -> str:
    try:
        return bytes(archive.get_metadata(name)).decode("utf-8", errors="replace").strip()
    except (KeyError, RuntimeError):
        return ""


def _search_archive(lib: Any, archive: Any, archive_name: str, terms: list[str], limit: int) -> list[Source]:
    paths = _ranked_paths(lib, archive, terms, limit)
    sources: list[Source] = []
    for path in paths:
        source = _source(archive, archive_name, path, terms)
        if source is not None and all(s.url != source.url for s in sources):
            sources.append(source)
    return sources[:limit]


def _ranked_paths(lib: Any, archive: Any, terms: list[str], limit: int) -> list[str]:
    if not archive.has_fulltext_index:
        suggestion = lib.suggestion.SuggestionSearcher(archive).suggest(" ".join(terms))
        return list(suggestion.getResults(0, limit))
    searcher = lib.search.Searcher(archive)

    def run(text: str, count: int) -> list[str]:
        return list(searcher.search(lib.search.Query().set_query(text)).getResults(0, count))

    ranked = run(" ".join(terms), limit)
    if len(ranked) >= limit or len(terms) == 1:
        return ranked
    # Relax: each page scores the number of keywords it matches, then its best rank.
    scores: dict[str, tuple[int, float]] = {}
    for term in terms:
        for rank, path in enumerate(run(term, _PER_TERM)):
            hits, best = scores.get(path, (0, 0.0))
            scores[path] = (hits + 1, max(best, 1.0 / (rank + 1)))
    relaxed = sorted(scores, key=lambda p: scores[p], reverse=True)
    return ranked + [p for p in relaxed if p not in ranked]


def _source(archive: Any, archive_name: str, path: str, terms: list[str]) -> Source | None:
    try:
        entry = archive.get_entry_by_path(path)
        if entry.is_redirect:
            entry = entry.get_redirect_entry()
        item = entry.get_item()
        mimetype = str(item.mimetype)
        if not mimetype.startswith(("text/", "application/xhtml")):
            return None
        raw = bytes(item.content)[: _MAX_PAGE_CHARS * 4].decode("utf-8", errors="replace")
    except (KeyError, RuntimeError):
        return None
    if "html" in mimetype:
        page_title, text = html_to_text(raw)
    else:
        page_title, text = "", normalize_text(raw)
    title = str(entry.title) or page_title or entry.path
    url = f"zim://{quote(archive_name)}/{quote(str(entry.path))}"
    return Source(title, url, best_passage(text[:_MAX_PAGE_CHARS], terms), _PROVIDER)


def _interleave(groups: list[list[Source]], limit: int) -> list[Source]:
    def rounds() -> Iterator[Source]:
        for i in range(max((len(g) for g in groups), default=0)):
            for group in groups:
                if i < len(group):
                    yield group[i]

    out: list[Source] = []
    for source in rounds():
        out.append(source)
        if len(out) == limit:
            break
    return out
