"""Text helpers shared by the providers and the document readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma_local.search.extract import ExtractError, extract
from gemma_local.search.text import best_passage, chunk_text, html_to_text, keywords, split_cjk


def test_html_to_text_keeps_visible_text_and_the_title() -> None:
    title, text = html_to_text(
        "<!doctype html><html><head><title> My  Page </title><style>.a{}</style>"
        "<script>alert('x')</script></head><body><nav>Home</nav><h1>Heading</h1>"
        "<p>First &amp; <b>bold</b> paragraph.</p><ul><li>one</li><li>two</li></ul>"
        "<noscript>enable js</noscript><p>Caf&eacute; &#8212; done</p></body></html>"
    )
    assert title == "My Page"
    assert text == "Home\n\nHeading\n\nFirst & bold paragraph.\n\none\n\ntwo\n\nCafé — done"
    assert html_to_text("<h1>Only heading</h1><p>x</p>")[0] == "Only heading"


def test_keywords_drop_stopwords_but_never_everything() -> None:
    assert keywords("What is the capital of France?") == ["capital", "france"]
    assert keywords("The the THE of") == ["the", "of"]
    assert keywords("Tell me about GPU-offload and KV cache, please") == ["gpu", "offload", "kv", "cache"]
    assert keywords("東京の人口は？") == ["東京の人口は"]
    assert keywords("a b c x y z 7") == ["7"]
    assert len(keywords(" ".join(f"w{i}" for i in range(50)))) == 12


def test_split_cjk_spaces_out_characters_only() -> None:
    assert split_cjk("GPU 東京 test") == "GPU  東 京  test"


def test_chunk_text_keeps_every_word_in_bounded_passages() -> None:
    paragraphs = [f"Paragraph {i}. " + "word " * (i * 13 % 97) for i in range(80)]
    paragraphs.append("x" * 5000)  # no space at all: cut hard
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, target_chars=1000, max_chars=1500)
    assert all(0 < len(c) <= 1500 for c in chunks)
    assert " ".join(" ".join(chunks).split()).replace(" ", "") == " ".join(text.split()).replace(" ", "")
    assert chunk_text("") == []
    assert chunk_text("short") == ["short"]


def test_best_passage_picks_the_paragraph_with_most_terms() -> None:
    text = "\n\n".join(["alpha only here " * 40, "beta and gamma together " * 30, "gamma alone " * 60])
    assert best_passage(text, ["beta", "gamma"], target_chars=600).startswith("beta and gamma")
    assert best_passage("", ["x"]) == ""


@pytest.mark.parametrize(
    ("name", "content", "title", "text"),
    [
        ("notes.md", "intro\n\n## Plan  ##\n\nbody", "Plan", "intro\n\n## Plan ##\n\nbody"),
        ("plain.txt", "just text\r\nsecond line", "plain", "just text\nsecond line"),
        ("doc.rst", "Overview\n========\n\nrst body", "Overview", "Overview\n========\n\nrst body"),
        ("page.htm", "<title>T</title><p>p</p>", "T", "p"),
    ],
)
def test_extract_titles_and_text(tmp_path: Path, name: str, content: str, title: str, text: str) -> None:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))
    assert extract(path, path.stat().st_size) == (title, text)


def test_extract_decodes_legacy_encodings_and_refuses_huge_files(tmp_path: Path) -> None:
    latin = tmp_path / "old.txt"
    latin.write_bytes("Caf\xe9 cr\xe8me".encode("cp1252"))
    assert extract(latin, latin.stat().st_size) == ("old", "Café crème")
    with pytest.raises(ExtractError, match="larger than 20 MB"):
        extract(latin, 21 * 1024 * 1024)
