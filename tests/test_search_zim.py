"""The ZIM provider on real archives written in the test with libzim's own writer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gemma_local.errors import MissingDependencyError, ProviderUnavailableError, ZimArchiveError
from gemma_local.search.providers.zim import ZimLibrary, ZimProvider

writer = pytest.importorskip("libzim.writer", reason="libzim is in the search extra")


class Page(writer.Item):
    def __init__(self, path: str, title: str, html: str) -> None:
        super().__init__()
        self._path, self._title, self._html = path, title, html

    def get_path(self) -> str:
        return self._path

    def get_title(self) -> str:
        return self._title

    def get_mimetype(self) -> str:
        return "text/html"

    def get_contentprovider(self) -> writer.ContentProvider:
        return writer.StringProvider(self._html)

    def get_hints(self) -> dict:
        return {writer.Hint.FRONT_ARTICLE: True}


def html(title: str, *paragraphs: str) -> str:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<html><head><title>{title}</title><script>var ignored = 'javascript';</script></head>"
        f"<body><h1>{title}</h1>{body}</body></html>"
    )


FILLER = [f"Section {i} of the article is about unrelated history and geography." for i in range(40)]

PAGES = [
    Page("Paris", "Paris", html("Paris", "Paris is the capital and largest city of France.", *FILLER,
                                "The Eiffel Tower was completed in 1889.")),
    Page("Berlin", "Berlin", html("Berlin", "Berlin is the capital of Germany.", "It has many museums.")),
    Page("Lyon", "Lyon", html("Lyon", "Lyon is a city in France known for its cuisine.")),
    Page("Tokyo", "東京", html("東京", "東京は日本の首都です。")),
]


def make_zim(path: Path, pages: list[Page], *, title: str, fulltext: bool = True) -> Path:
    with writer.Creator(path).config_indexing(fulltext, "eng") as creator:
        creator.set_mainpath(pages[0].get_path())
        for page in pages:
            creator.add_item(page)
        creator.add_metadata("Title", title)
        creator.add_metadata("Language", "eng")
        creator.add_redirection("Deutschland", "Deutschland", "Berlin", {writer.Hint.FRONT_ARTICLE: True})
    return path


@pytest.fixture
def wiki(tmp_path: Path) -> Path:
    return make_zim(tmp_path / "tinywiki.zim", PAGES, title="Tiny Wiki")


@pytest.fixture
def library(tmp_path: Path) -> ZimLibrary:
    return ZimLibrary(tmp_path / "zim-archives.json")


def test_add_list_and_remove_archives(library: ZimLibrary, wiki: Path) -> None:
    info = library.add(wiki)
    # Four pages and the redirect, which is a front article too.
    assert (info.path, info.title, info.articles, info.fulltext) == (str(wiki), "Tiny Wiki", 5, True)
    assert info.size_bytes == wiki.stat().st_size
    library.add(wiki)  # again: refreshed, not duplicated
    assert [a.path for a in library.archives()] == [str(wiki)]
    assert library.remove(wiki) is True
    assert library.remove(wiki) is False
    assert library.archives() == []


def test_search_uses_the_fulltext_index_and_extracts_the_matching_passage(library: ZimLibrary, wiki: Path) -> None:
    library.add(wiki)
    provider = ZimProvider(library)
    # All keywords first; then pages with some of them fill the remaining places.
    results = provider.search("capital of France", limit=3, timeout=5.0)
    assert results[0].title == "Paris"
    assert {s.title for s in results} == {"Paris", "Berlin", "Lyon"}
    [paris] = provider.search("capital of France", limit=1, timeout=5.0)
    assert paris.title == "Paris"
    assert paris.url == "zim://tinywiki.zim/Paris"
    assert paris.provider == "zim"
    assert "capital and largest city of France" in paris.snippet
    assert "javascript" not in paris.snippet

    # The passage shown is the one with the query words, not the top of the page.
    [tower] = provider.search("Eiffel Tower completed", limit=3, timeout=5.0)
    assert "completed in 1889" in tower.snippet
    assert "capital and largest" not in tower.snippet


def test_natural_language_questions_are_relaxed_keyword_by_keyword(library: ZimLibrary, wiki: Path) -> None:
    library.add(wiki)
    provider = ZimProvider(library)
    # libzim ANDs terms and "museums" + "france" match no page together; relaxing finds both,
    # pages matching more keywords first.
    results = provider.search("Which city in France has museums?", limit=5, timeout=5.0)
    titles = [s.title for s in results]
    assert set(titles) == {"Paris", "Lyon", "Berlin"}
    assert titles.index("Lyon") < titles.index("Berlin")  # Lyon: city + France; Berlin: museums
    assert provider.search("zzyzx quuxle", limit=5, timeout=5.0) == []
    assert [s.title for s in provider.search("首都", limit=5, timeout=5.0)] == ["東京"]


def test_archives_without_fulltext_index_are_searched_by_title(library: ZimLibrary, tmp_path: Path) -> None:
    titles_only = make_zim(tmp_path / "titles.zim", PAGES, title="Titles", fulltext=False)
    assert library.add(titles_only).fulltext is False
    [hit] = ZimProvider(library).search("Lyon", limit=3, timeout=5.0)
    assert hit.title == "Lyon"
    assert "known for its cuisine" in hit.snippet


def test_results_from_several_archives_are_interleaved(library: ZimLibrary, wiki: Path, tmp_path: Path) -> None:
    other = make_zim(
        tmp_path / "other.zim",
        [Page("Marseille", "Marseille", html("Marseille", "Marseille is a port city in France.")),
         Page("Nice", "Nice", html("Nice", "Nice is a city in France on the Riviera."))],
        title="Other",
    )
    library.add(wiki)
    library.add(other)
    results = ZimProvider(library).search("city France", limit=4, timeout=5.0)
    assert [s.url.split("/")[2] for s in results] == ["tinywiki.zim", "other.zim", "tinywiki.zim", "other.zim"]


def test_unavailable_without_archives_and_errors_for_bad_files(library: ZimLibrary, wiki: Path, tmp_path: Path) -> None:
    provider = ZimProvider(library)
    with pytest.raises(ProviderUnavailableError, match="gemma-local index add-zim FILE"):
        provider.search("paris", limit=3, timeout=5.0)
    with pytest.raises(ZimArchiveError, match="no such file"):
        library.add(tmp_path / "missing.zim")
    bogus = tmp_path / "bogus.zim"
    bogus.write_bytes(b"not a zim archive at all" * 100)
    with pytest.raises(ZimArchiveError, match="not a readable ZIM archive"):
        library.add(bogus)
    # A registered archive deleted from disk makes the provider unavailable, not broken.
    library.add(wiki)
    wiki.unlink()
    with pytest.raises(ProviderUnavailableError, match="cannot be opened"):
        provider.search("paris", limit=3, timeout=5.0)


def test_missing_libzim_names_the_extra(library: ZimLibrary, wiki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "libzim", None)
    with pytest.raises(MissingDependencyError) as err:
        library.add(wiki)
    assert err.value.package == "libzim"
    assert "pip install 'gemma-local[search]'" in err.value.message
