"""The local document index (SQLite FTS5 + BM25) on generated folders of real files."""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path

import pytest

from gemma_local.errors import IndexPathError, ProviderUnavailableError
from gemma_local.search.providers.local_index import LocalIndex, LocalIndexProvider, fts_query


def write(path: Path, text: str, *, mtime_offset: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if mtime_offset:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + mtime_offset * 1_000_000_000))
    return path


def make_pdf(path: Path, lines: list[str], title: str) -> Path:
    """A minimal, valid one-page PDF with Helvetica text (byte offsets computed exactly)."""
    ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"({escaped}) Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (" + title.encode("latin-1") + b") >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(out)
    return path


@pytest.fixture
def index(tmp_path: Path) -> LocalIndex:
    return LocalIndex(tmp_path / "search.db")


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    write(root / "lisbon.md", "# Lisbon trip\n\nTram 28 climbs to the castle. Pastéis de nata in Belém.\n")
    write(
        root / "garden" / "tomatoes.txt",
        "Tomatoes need full sun. Water the tomatoes deeply twice a week; tomatoes split when "
        "watering is irregular.\n",
    )
    write(root / "garden" / "roses.md", "# Roses\n\nPrune roses in late winter. Roses like sun too.\n")
    write(
        root / "recipes" / "gazpacho.html",
        "<html><head><title>Gazpacho</title><style>p{color:red}</style>"
        "<script>var tomatoes = 'hidden';</script></head>"
        "<body><h1>Cold soup</h1><p>Blend ripe tomatoes, cucumber &amp; garlic.</p></body></html>",
    )
    write(root / ".git" / "HEAD.md", "tomatoes in a hidden folder must not be indexed")
    write(root / "node_modules" / "pkg" / "README.md", "tomatoes in node_modules must not be indexed")
    write(root / "image.png", "not a document")
    return root


def titles(sources: list) -> list[str]:
    return [s.title for s in sources]


def test_add_reports_counts_and_search_ranks_by_bm25(index: LocalIndex, notes: Path) -> None:
    [report] = index.add([notes])
    assert (report.root, report.added, report.updated, report.unchanged, report.removed) == (
        str(notes), 4, 0, 0, 0)
    assert report.skipped == []

    # The document about tomatoes (three mentions) outranks the soup that names them once;
    # the stopwords of the question do not match everything.
    results = index.search("how often should I water my tomatoes?", limit=5)
    assert titles(results) == ["tomatoes", "Gazpacho"]
    assert results[0].url == (notes / "garden" / "tomatoes.txt").as_uri()
    assert results[0].location == str(notes / "garden" / "tomatoes.txt")
    assert results[0].provider == "local"
    assert results[0].score is not None and results[0].score > results[1].score > 0
    # A title match weighs more than a body match.
    assert titles(index.search("roses sun"))[0] == "Roses"
    # Terms are OR-ed: one matching word is enough.
    assert titles(index.search("castle zeppelin")) == ["Lisbon trip"]
    assert index.search("zeppelin") == []
    # Limit is per document.
    assert len(index.search("tomatoes roses sun", limit=1)) == 1


def test_html_markup_scripts_and_hidden_folders_are_not_indexed(index: LocalIndex, notes: Path) -> None:
    index.add([notes])
    [soup] = index.search("cucumber")
    assert soup.title == "Gazpacho"
    assert soup.snippet == "Cold soup\n\nBlend ripe tomatoes, cucumber & garlic."
    assert index.search("color red hidden") == []
    assert all("node_modules" not in s.url and ".git" not in s.url for s in index.search("indexed tomatoes"))


def test_incremental_update_skips_unchanged_rereads_changed_drops_deleted(index: LocalIndex, notes: Path) -> None:
    index.add([notes])
    [again] = index.add([notes])
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, 4, 0)

    write(notes / "lisbon.md", "# Lisbon trip\n\nWe took the ferry to Cacilhas.\n", mtime_offset=5)
    (notes / "garden" / "roses.md").unlink()
    write(notes / "new.txt", "A new note about ferries.")
    read: list[str] = []
    [report] = index.add([notes], progress=read.append)
    assert (report.added, report.updated, report.unchanged, report.removed) == (1, 1, 2, 1)
    assert sorted(read) == [str(notes / "lisbon.md"), str(notes / "new.txt")]
    assert index.search("castle") == []  # the old text of the changed file is gone
    assert titles(index.search("ferry Cacilhas")) == ["Lisbon trip"]
    assert index.search("prune") == []  # the deleted file is gone
    assert index.document_count() == 4

    # update() rescans every root without naming it.
    (notes / "new.txt").unlink()
    [report] = index.update()
    assert (report.removed, report.unchanged) == (1, 3)

    # A root that vanished (an unmounted drive) keeps its documents until removed on purpose.
    notes.rename(notes.with_name("elsewhere"))
    [report] = index.update()
    assert (report.removed, report.unchanged) == (0, 3)
    assert report.skipped == [(str(notes), "missing on disk; its documents are kept (`index rm` drops them)")]
    assert titles(index.search("ferry")) == ["Lisbon trip"]
    assert index.remove(notes) == 3


def test_unicode_diacritics_cyrillic_greek_and_cjk(index: LocalIndex, tmp_path: Path) -> None:
    docs = tmp_path / "intl"
    write(docs / "cafe.md", "# Café crème\n\nUn café très crémeux à Montréal.")
    write(docs / "moscow.txt", "Москва — столица России. Красная площадь.")
    write(docs / "athens.txt", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.")
    write(docs / "tokyo.md", "# 東京\n\n東京は日本の首都です。人口は約1400万人。")
    write(docs / "beijing.md", "# 北京\n\n北京是中国的首都。")
    write(docs / "seoul.txt", "서울은 대한민국의 수도이다.")
    index.add([docs])

    assert titles(index.search("cafe creme")) == ["Café crème"]  # diacritics folded both ways
    assert titles(index.search("crémeux")) == ["Café crème"]
    assert titles(index.search("столица России")) == ["moscow"]
    assert titles(index.search("αθήνα ελλάδας")) == ["athens"]  # case folded
    # CJK: no spaces between words, found by character bigrams; both capitals mention 首都.
    assert titles(index.search("東京の人口")) == ["東京"]
    assert set(titles(index.search("首都"))) == {"東京", "北京"}
    assert titles(index.search("中国")) == ["北京"]
    assert titles(index.search("서울")) == ["seoul"]
    # The snippet is the original text, not the per-character form that is indexed.
    assert index.search("東京の人口")[0].snippet == "# 東京\n\n東京は日本の首都です。人口は約1400万人。"


def test_long_documents_answer_with_the_matching_passage(index: LocalIndex, tmp_path: Path) -> None:
    filler = "\n\n".join(f"Paragraph {i} talks about nothing in particular, padding the file." for i in range(60))
    needle = "The reset button is behind the flux capacitor."
    write(tmp_path / "long" / "manual.md", f"# Manual\n\n{filler}\n\n{needle}\n\n{filler}")
    index.add([tmp_path / "long"])
    [hit] = index.search("where is the reset button")
    assert "flux capacitor" in hit.snippet
    assert len(hit.snippet) <= 1500


def test_pdf_text_and_title_are_indexed(index: LocalIndex, tmp_path: Path) -> None:
    docs = tmp_path / "pdfs"
    docs.mkdir()
    make_pdf(docs / "report.pdf", ["Quarterly report", "Revenue grew because of solar panels."], "Q3 Report")
    [report] = index.add([docs])
    assert (report.added, report.skipped) == (1, [])
    [hit] = index.search("solar panels revenue")
    assert hit.title == "Q3 Report"
    assert "Revenue grew because of solar panels." in hit.snippet


def test_pdfs_without_pypdf_are_skipped_naming_the_extra(
    index: LocalIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "pdfs"
    docs.mkdir()
    make_pdf(docs / "report.pdf", ["Solar panels"], "Q3 Report")
    monkeypatch.setitem(sys.modules, "pypdf", None)
    [report] = index.add([docs])
    assert report.skipped == [(str(docs / "report.pdf"), "PDF text needs pypdf: pip install 'gemma-local[search]'")]
    monkeypatch.delitem(sys.modules, "pypdf")
    [report] = index.add([docs])  # skipped files are tried again: now it is read
    assert (report.added, report.skipped) == (1, [])


def test_unreadable_files_are_skipped_with_a_reason(index: LocalIndex, tmp_path: Path) -> None:
    docs = tmp_path / "mixed"
    write(docs / "ok.md", "fine words")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02 binary")
    [report] = index.add([docs])
    assert report.added == 1
    reasons = dict(report.skipped)
    assert reasons[str(docs / "binary.txt")] == "binary content"
    assert reasons[str(docs / "broken.pdf")].startswith("unreadable PDF")


def test_roots_nesting_single_files_and_removal(index: LocalIndex, notes: Path) -> None:
    index.add([notes / "garden"])
    index.add([notes / "lisbon.md"])
    assert [r.path for r in index.roots()] == [str(notes / "garden"), str(notes / "lisbon.md")]
    # A parent folder absorbs the roots inside it; its documents are not indexed twice.
    [report] = index.add([notes])
    assert (report.added, report.unchanged) == (1, 3)
    [root] = index.roots()
    assert (root.path, root.documents, root.exists) == (str(notes), 4, True)
    # A folder inside an indexed one rescans the indexed one.
    [report] = index.add([notes / "recipes"])
    assert report.root == str(notes)

    with pytest.raises(IndexPathError, match="inside the indexed folder"):
        index.remove(notes / "garden")
    with pytest.raises(IndexPathError, match="not in the index"):
        index.remove(notes.parent / "elsewhere")
    assert index.remove(notes) == 4
    assert index.roots() == []
    assert index.search("tomatoes") == []


def test_bad_paths_are_rejected_before_anything_changes(index: LocalIndex, notes: Path) -> None:
    with pytest.raises(IndexPathError, match="no such file or folder"):
        index.add([notes, notes / "missing"])
    with pytest.raises(IndexPathError, match="not a document type"):
        index.add([notes / "image.png"])
    assert index.roots() == []


def test_fts_query_takes_user_text_literally() -> None:
    assert fts_query('tomatoes AND "roses" OR sun*') == '"tomatoes" OR "roses" OR "sun"'
    assert fts_query("NEAR(a b) col:value") == '"near" OR "col" OR "value"'
    assert fts_query("東京都") == '"東 京" OR "京 都"'
    assert fts_query("the of and") == '"the" OR "of" OR "and"'  # only stopwords: keep them
    assert fts_query("  ?! ") is None


def test_provider_reports_an_empty_index_as_unavailable(index: LocalIndex, notes: Path) -> None:
    provider = LocalIndexProvider(index)
    with pytest.raises(ProviderUnavailableError, match="gemma-local index add PATH"):
        provider.search("tomatoes", limit=3, timeout=1.0)
    index.add([notes])
    assert titles(provider.search("tomatoes", limit=1, timeout=1.0)) == ["tomatoes"]


VOCABULARY = [
    "river", "mountain", "forest", "engine", "battery", "garden", "kitchen", "violin", "harbor",
    "lantern", "meadow", "orbit", "pepper", "quartz", "saddle", "timber", "velvet", "walnut", "yacht",
    "zephyr", "anchor", "basalt", "candle", "dagger", "ember", "falcon", "glacier", "hazel", "island",
    "jasmine", "kettle", "lemon", "marble", "nectar", "oyster", "pillow", "quiver", "raven", "silver",
    "thunder", "umbrella", "valley", "willow", "xenon", "yarrow", "zinc", "amber", "bronze", "copper",
]


def generate_corpus(root: Path, n_docs: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    for i in range(n_docs):
        words = rng.choices(VOCABULARY, k=30)
        folder = root / f"d{i // 1000:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"note{i:05d}.md").write_text(f"# Note {i}\n\n{' '.join(words)}\n", encoding="utf-8")


# Generous against a 2-core CI machine (measured: about 4 s to build, under 15 ms a query).
BUILD_BUDGET_S = 40.0
QUERY_BUDGET_S = 0.25


def test_ten_thousand_documents_within_the_bench_budget(index: LocalIndex, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    generate_corpus(corpus, 10_000)
    write(corpus / "needle.md", "# Needle\n\nThe saffron submarine surfaced near the lighthouse.")

    started = time.perf_counter()
    reports = index.add([corpus])
    build_s = time.perf_counter() - started
    assert sum(r.added for r in reports) == 10_001
    assert build_s < BUILD_BUDGET_S, f"building the 10k index took {build_s:.1f}s"

    latencies = []
    for query in ["saffron submarine", "river mountain forest", "what about the glacier and the falcon?"] * 5:
        t0 = time.perf_counter()
        results = index.search(query, limit=5)
        latencies.append(time.perf_counter() - t0)
        assert len(results) == (1 if query == "saffron submarine" else 5)
    assert index.search("saffron submarine")[0].title == "Needle"
    # "note" is in every title: its BM25 weight is nil, so it is left out rather than making
    # every document a (zero-score) match; alone, it is kept.
    assert titles(index.search("saffron note", limit=5)) == ["Needle"]
    assert len(index.search("note", limit=5)) == 5
    assert statistics.median(latencies) < QUERY_BUDGET_S, f"median query {statistics.median(latencies):.3f}s"

    started = time.perf_counter()
    [again] = index.add([corpus])
    assert (again.unchanged, again.added, again.updated) == (10_001, 0, 0)
    assert time.perf_counter() - started < build_s  # incremental: nothing is read again
