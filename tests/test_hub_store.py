"""The local store through ``gemma-local models …``: import, list, show, verify, rm — all offline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hub_fake import gguf_mmproj, gguf_model, sha256

from gemma_local.cli import main
from gemma_local.errors import ModelNotFoundError
from gemma_local.hub.progress import human_bytes
from gemma_local.hub.resolve import resolve_model
from gemma_local.hub.store import ModelStore, StoredFile


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "downloads" / "Tiny-Q4_K_M.gguf"
    model.parent.mkdir()
    model.write_bytes(gguf_model(40_000, seed=3))
    mmproj = tmp_path / "downloads" / "mmproj-tiny-f16.gguf"
    mmproj.write_bytes(gguf_mmproj(8_000))
    return {"model": model, "mmproj": mmproj}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails the test: these commands must work offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.usefixtures("no_network")
def test_import_hashes_and_registers_in_place(files: dict[str, Path]) -> None:
    result = run("models", "import", str(files["model"]), "--mmproj", str(files["mmproj"]), "--json")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)
    assert entry["name"] == "tiny-q4_k_m"
    assert entry["source"] == "import" and entry["managed"] is False
    assert entry["quant"] == "q4_k_m" and entry["vision"] is True
    assert entry["path"] == str(files["model"].resolve())
    assert [(f["role"], f["sha256"], f["size"]) for f in entry["files"]] == [
        ("model", sha256(files["model"].read_bytes()), files["model"].stat().st_size),
        ("mmproj", sha256(files["mmproj"].read_bytes()), files["mmproj"].stat().st_size),
    ]

    rows = json.loads(run("models", "list", "--json").output)
    (row,) = [r for r in rows if r["source"] == "store"]
    assert (row["name"], row["vision"], row["mmproj_path"]) == ("tiny-q4_k_m", True, str(files["mmproj"].resolve()))
    resolved = resolve_model("tiny-q4_k_m")
    assert (resolved.path, resolved.mmproj) == (files["model"].resolve(), files["mmproj"].resolve())


def test_import_refuses_what_it_cannot_load(files: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_text("<html>404</html>")
    result = run("models", "import", str(junk))
    assert (
        result.exit_code == 1 and result.output == f"Error: {junk.resolve()} is not a GGUF model file.\n"
    )

    result = run("models", "import", str(files["mmproj"]))
    assert result.exit_code == 1 and "is a vision projector, not a model; pass it with --mmproj" in result.output

    result = run("models", "import", str(files["model"]), "--mmproj", str(files["model"]))
    assert result.exit_code == 1 and "is not a vision projector" in result.output

    assert run("models", "import", str(files["model"]), "--name", "mine").exit_code == 0
    result = run("models", "import", str(files["model"]), "--name", "MINE")
    assert result.exit_code == 1 and "A model named 'MINE' is already in the store" in result.output
    assert [e.name for e in ModelStore().list()] == ["mine"]


@pytest.mark.usefixtures("no_network")
def test_show_reads_the_gguf_metadata(files: dict[str, Path]) -> None:
    run("models", "import", str(files["model"]), "--mmproj", str(files["mmproj"]), "--name", "tiny")
    info = json.loads(run("models", "show", "tiny", "--json").output)
    gguf = info["gguf"]
    assert (gguf["architecture"], gguf["quantization"], gguf["context_length"]) == ("gemma3", "Q4_K_M", 32768)
    assert (gguf["layers"], gguf["attention_heads"], gguf["kv_heads"], gguf["sliding_window"]) == (6, 4, 1, 512)
    assert info["vision"] is True and info["mmproj"]["projector_type"] == "gemma3"
    assert info["source"] == "import" and info["files"][0]["sha256"] == sha256(files["model"].read_bytes())

    text = run("models", "show", "tiny").output
    assert "  architecture         gemma3\n" in text
    assert "  quantization         Q4_K_M\n" in text
    assert "  layers               6\n" in text
    assert "  vision               " in text and "(gemma3, image 64px)" in text

    # A bare GGUF path works too, and an unknown name says how to get it.
    assert json.loads(run("models", "show", str(files["model"]), "--json").output)["gguf"]["layers"] == 6
    result = run("models", "show", "gemma-3-12b")
    assert result.exit_code == 1 and "`gemma-local pull gemma-3-12b`" in result.output


@pytest.mark.usefixtures("no_network")
def test_verify_reports_corruption_and_missing_files(files: dict[str, Path]) -> None:
    run("models", "import", str(files["model"]), "--mmproj", str(files["mmproj"]), "--name", "tiny")
    result = run("models", "verify")
    assert result.exit_code == 0, result.output
    assert result.output.count("OK") == 2

    data = bytearray(files["model"].read_bytes())
    data[-10] ^= 0x01
    files["model"].write_bytes(bytes(data))
    result = run("models", "verify", "tiny", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output.split("\nError:")[0])
    assert report[0]["ok"] is False
    assert [f["status"] for f in report[0]["files"]] == ["sha256_mismatch", "ok"]
    assert report[0]["files"][0]["actual_sha256"] == sha256(bytes(data))
    assert "1 file(s) failed verification" in result.output

    files["mmproj"].unlink()
    text = run("models", "verify", "tiny").output
    assert "tiny: SHA256_MISMATCH" in text and "tiny: MISSING" in text


def _register(store: ModelStore, name: str, files: list[tuple[str, Path]]) -> None:
    stored = [
        StoredFile(role=role, path=store.relative(p), size=p.stat().st_size, sha256=sha256(p.read_bytes()))  # type: ignore[arg-type]
        for role, p in files
    ]
    store.register(
        store.new_entry(name=name, source="hub", repo="org/repo", revision="c0ffee", files=stored, vision=True)
    )


@pytest.mark.usefixtures("no_network")
def test_rm_frees_the_disk_but_keeps_shared_and_imported_files(files: dict[str, Path], isolated_home: Path) -> None:
    store = ModelStore()
    folder = store.blob_path("org/repo", "c0ffee", "x")
    folder.parent.mkdir(parents=True)
    q4, q8, proj = (folder.parent / n for n in ("m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-f16.gguf"))
    q4.write_bytes(gguf_model(10_000, seed=1))
    q8.write_bytes(gguf_model(20_000, seed=2))
    proj.write_bytes(gguf_mmproj(5000))
    _register(store, "org-q4", [("model", q4), ("mmproj", proj)])
    _register(store, "org-q8", [("model", q8), ("mmproj", proj)])

    q4_size = q4.stat().st_size
    result = run("models", "rm", "org-q4")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Removed org-q4; freed {human_bytes(q4_size)}.\n")
    assert f"kept {proj} (still used by another model)" in result.output
    assert not q4.exists() and proj.exists() and q8.exists()

    expected_freed = q8.stat().st_size + proj.stat().st_size
    entry, freed, kept = ModelStore().remove("org-q8")
    assert (entry.name, freed, kept) == ("org-q8", expected_freed, [])
    assert not q8.exists() and not proj.exists()
    assert not (isolated_home / "store" / "org").exists()  # empty folders pruned

    run("models", "import", str(files["model"]), "--name", "mine")
    result = run("models", "rm", "mine")
    assert "imported in place" in result.output and files["model"].exists()
    assert ModelStore().list() == []

    result = run("models", "rm", "mine")
    assert result.exit_code == 1 and result.output == "Error: No model named 'mine' in the store (installed: none).\n"


@pytest.mark.usefixtures("no_network")
def test_import_copy_puts_the_file_in_the_store(files: dict[str, Path], isolated_home: Path) -> None:
    result = run("models", "import", str(files["model"]), "--copy", "--json")
    entry = json.loads(result.output)
    copied = Path(entry["path"])
    assert (
        copied.is_relative_to(isolated_home / "store" / "local") and copied.read_bytes() == files["model"].read_bytes()
    )
    assert entry["managed"] is True
    run("models", "rm", entry["name"])
    assert not copied.exists() and files["model"].exists()


def test_a_registered_model_whose_file_vanished_is_not_loaded(files: dict[str, Path]) -> None:
    run("models", "import", str(files["model"]), "--name", "tiny")
    files["model"].unlink()
    with pytest.raises(ModelNotFoundError, match=r"tiny is registered but its file .* is missing"):
        resolve_model("tiny")
    with pytest.raises(ModelNotFoundError, match=r"has not been pulled yet; download it with `gemma-local pull"):
        resolve_model("hf.co/org/never-pulled:Q4_K_M")


def test_unreadable_registry_is_a_clear_error(isolated_home: Path) -> None:
    (isolated_home / "registry.json").write_text("{ not json")
    result = run("models", "list")
    assert result.exit_code == 1
    assert "The model registry" in result.output and "is unreadable" in result.output
