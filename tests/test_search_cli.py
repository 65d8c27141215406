"""``gemma-local index …``: exact output, in the per-test GEMMA_LOCAL_HOME."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gemma_local.cli import main


@pytest.fixture(autouse=True)
def _offline_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GEMMA_LOCAL_SEARXNG_URL", "GEMMA_LOCAL_SEARCH_PROVIDERS", "GEMMA_LOCAL_SEARCH_INDEX"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["index", *args], catch_exceptions=False)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "espresso.md").write_text("# Espresso\n\nGrind fine, brew 25 seconds at 9 bar.", encoding="utf-8")
    (root / "sub" / "tea.txt").write_text("Green tea: 80 degrees, two minutes.", encoding="utf-8")
    (root / "sub" / "scan.pdf").write_bytes(b"%PDF-1.4 broken")
    return root


def test_empty_index(isolated_home: Path) -> None:
    result = run("list")
    assert result.exit_code == 0
    assert result.output == (
        "Nothing indexed yet. Add documents with `gemma-local index add PATH`, or an offline archive "
        "with `gemma-local index add-zim FILE`.\n"
    )
    assert json.loads(run("list", "--json").output) == {
        "index": str(isolated_home / "search.db"), "documents": 0, "roots": [], "zim": []}
    result = run("add")
    assert result.output == "Nothing to update: the index is empty. Add a folder with `gemma-local index add PATH`.\n"
    result = run("search", "espresso")
    assert result.exit_code == 1
    assert result.output.startswith("Error: No search provider is available. local (the document index is empty")


def test_add_list_search_rm(docs: Path, isolated_home: Path) -> None:
    result = run("add", str(docs))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.fullmatch(
        rf"Indexed {re.escape(str(docs))}: 2 added, 0 updated, 0 unchanged, 0 removed, 1 skipped "
        r"\(2 documents, \d+\.\ds\)\.",
        lines[0],
    )
    assert lines[1].startswith(f"  skipped {docs / 'sub' / 'scan.pdf'}: unreadable PDF")
    assert len(lines) == 2

    assert run("add").output.startswith(f"Indexed {docs}: 0 added, 0 updated, 2 unchanged, 0 removed, 1 skipped")

    listing = run("list").output.splitlines()
    assert listing[0] == f"Documents ({isolated_home / 'search.db'}):"
    assert re.fullmatch(rf"  {re.escape(str(docs))}\s+2 documents  updated \d{{4}}-\d\d-\d\d \d\d:\d\d", listing[1])
    data = json.loads(run("list", "--json").output)
    assert data["documents"] == 2
    assert [(r["path"], r["documents"], r["passages"], r["exists"]) for r in data["roots"]] == [(str(docs), 2, 2, True)]

    result = run("search", "how long to brew espresso?")
    assert result.exit_code == 0
    assert result.output == (
        f"[1] Espresso — {docs / 'espresso.md'}  (local)\n"
        "    # Espresso Grind fine, brew 25 seconds at 9 bar.\n"
    )
    found = json.loads(run("search", "green tea", "--json").output)
    assert (found["provider"], found["note"]) == ("local", None)
    assert [(s["title"], s["location"], s["url"]) for s in found["sources"]] == [
        ("tea", str(docs / "sub" / "tea.txt"), (docs / "sub" / "tea.txt").as_uri())]

    missing = run("search", "zeppelin")
    assert missing.exit_code == 1
    assert missing.output.startswith("Error: No sources found for this query (searched: local).")

    bad = run("search", "tea", "-p", "bing")
    assert bad.exit_code == 1
    assert "Unknown search provider 'bing'" in bad.output

    inside = run("rm", str(docs / "sub"))
    assert inside.exit_code == 1
    assert f"is inside the indexed folder {docs}" in inside.output
    assert run("rm", str(docs)).output == f"Removed {docs} (2 documents).\n"
    assert run("rm", str(docs)).exit_code == 1


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    result = run("add", str(tmp_path / "nope"))
    assert (result.exit_code, result.output) == (1, f"Error: {tmp_path / 'nope'}: no such file or folder.\n")
    result = run("add-zim", str(tmp_path / "nope.zim"))
    assert (result.exit_code, result.output) == (1, f"Error: {tmp_path / 'nope.zim'}: no such file.\n")


def test_zim_archives_through_the_cli(tmp_path: Path) -> None:
    writer = pytest.importorskip("libzim.writer")

    class Page(writer.Item):
        def get_path(self) -> str:
            return "Espresso"

        def get_title(self) -> str:
            return "Espresso"

        def get_mimetype(self) -> str:
            return "text/html"

        def get_contentprovider(self) -> writer.ContentProvider:
            return writer.StringProvider("<p>Espresso is coffee brewed by forcing hot water under pressure.</p>")

        def get_hints(self) -> dict:
            return {writer.Hint.FRONT_ARTICLE: True}

    zim = tmp_path / "coffee.zim"
    with writer.Creator(zim).config_indexing(True, "eng") as creator:
        creator.add_item(Page())
        creator.add_metadata("Title", "Coffee wiki")

    assert run("add-zim", str(zim)).output == f"Added {zim}: Coffee wiki, 1 articles (full-text index).\n"
    assert run("list").output == f"ZIM archives:\n  {zim}  Coffee wiki, 1 articles, full text\n"
    assert run("search", "espresso pressure").output == (
        "[1] Espresso — zim://coffee.zim/Espresso  (zim)\n"
        "    Espresso is coffee brewed by forcing hot water under pressure.\n"
    )
    assert run("rm", str(zim)).output == f"Removed ZIM archive {zim}.\n"
    assert run("list").output.startswith("Nothing indexed yet.")


def test_search_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    from gemma_local.commands.search_options import search_options, search_settings
    from gemma_local.search import default_chain

    @click.command()
    @search_options
    def cmd(**flags: object) -> None:
        chain = default_chain(search_settings(**flags))
        click.echo(f"{','.join(chain.names)} {chain.timeout_s}")

    monkeypatch.setenv("GEMMA_LOCAL_SEARCH_TIMEOUT", "2.5")
    runner = CliRunner()
    assert runner.invoke(cmd, []).output == "local,zim 2.5\n"
    assert runner.invoke(cmd, ["--search-timeout", "1"]).output == "local,zim 1.0\n"
    assert runner.invoke(cmd, ["--searxng-url", "http://127.0.0.1:9"]).output == "searxng,local,zim 2.5\n"
    assert runner.invoke(cmd, ["--search-providers", "zim"]).output == "zim 2.5\n"
    bad = runner.invoke(cmd, ["--search-timeout", "0"])
    assert bad.exit_code == 2 and "0.1<=x<=120" in bad.output
