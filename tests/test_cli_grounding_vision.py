"""CLI: --search (the search hook over a real local index) and --image / /image (real mtmd)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from test_cli import run_cli

ARGS = ("--temperature", "0", "--max-tokens", "6", "--ctx", "2048", "--json")


def test_generate_with_search_cites_the_local_index(tmp_path: Path, model_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "harbor.md").write_text("# Zephyrine harbor\n\nThe zephyrine harbor was painted cobalt blue in 1911.\n")
    assert run_cli("index", "add", str(notes)).returncode == 0
    proc = run_cli("generate", "What colour is the zephyrine harbor?", "--search", "--search-providers", "local", *ARGS)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["search"]["provider"] == "local" and result["search"]["sources_used"] == 1
    assert result["text"].endswith(f"\n\nSources:\n[1] Zephyrine harbor — {notes / 'harbor.md'}")
    # The sources went into the prompt: it is much longer than the bare question.
    bare = json.loads(run_cli("generate", "What colour is the zephyrine harbor?", *ARGS).stdout)
    assert result["usage"]["prompt_tokens"] > bare["usage"]["prompt_tokens"] + 20

    quiet = run_cli(
        "generate",
        "What colour is the zephyrine harbor?",
        "--search",
        "--disable-formatting",
        "--search-providers",
        "local",
        *ARGS,
    )
    quiet_result = json.loads(quiet.stdout)
    assert "Sources:" not in quiet_result["text"] and quiet_result["search"]["sources_used"] == 1


def test_search_with_nothing_indexed_answers_without_sources(model_path: Path) -> None:
    proc = run_cli("generate", "What is the zephyrine harbor?", "--search", "--search-providers", "local", *ARGS)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["search"]["sources_used"] == 0
    assert "\n\nSources: none." in result["text"]


def test_generate_with_images(tmp_path: Path, tiny_mmproj: Path) -> None:
    picture = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(picture)
    plain = json.loads(run_cli("generate", "Describe it.", *ARGS).stdout)
    one = run_cli("generate", "Describe it.", "--image", str(picture), "--mmproj", str(tiny_mmproj), *ARGS)
    assert one.returncode == 0, one.stderr
    two = run_cli(
        "generate", "Describe it.", "-i", str(picture), "-i", str(picture), "--mmproj", str(tiny_mmproj), *ARGS
    )
    n_plain = plain["usage"]["prompt_tokens"]
    assert json.loads(one.stdout)["usage"]["prompt_tokens"] == n_plain + 258
    assert json.loads(two.stdout)["usage"]["prompt_tokens"] == n_plain + 2 * 258


def test_image_errors_are_one_line(tmp_path: Path, model_path: Path) -> None:
    picture = tmp_path / "red.png"
    Image.new("RGB", (8, 8)).save(picture)
    no_vision = run_cli("generate", "Describe it.", "--image", str(picture), *ARGS)
    assert no_vision.returncode == 1 and "no vision" in no_vision.stderr and "Traceback" not in no_vision.stderr
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    bad = run_cli("generate", "Describe it.", "--image", str(not_image), *ARGS)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_chat_image_command(tmp_path: Path, tiny_mmproj: Path) -> None:
    picture = tmp_path / "blue.png"
    Image.new("RGB", (40, 30), (0, 0, 255)).save(picture)
    script = f"/image {picture}\nWhat is this?\n/image {tmp_path / 'missing.png'}\n/exit\n"
    proc = run_cli("chat", "--temperature", "0", "--max-tokens", "3", "--mmproj", str(tiny_mmproj), stdin=script)
    assert proc.returncode == 0, proc.stderr
    assert f"(image attached: {picture})" in proc.stderr
    assert "error:" in proc.stderr  # the missing file, reported without leaving the chat
