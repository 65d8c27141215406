"""Pure parts of the hub: catalog and names, file selection, the memory rule, the GGUF reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_fake import gguf_mmproj, gguf_model

from gemma_local.errors import InsufficientMemoryError, StoreError, UnknownModelNameError
from gemma_local.hub import select
from gemma_local.hub.catalog import CatalogRequest, HubRequest, load_catalog, parse_name
from gemma_local.hub.fit import GIB, MemoryBudget, check_fit, choose_quant, required_bytes
from gemma_local.hub.gguf_meta import read_gguf

# --- catalog ---------------------------------------------------------------------------------


def test_catalog_covers_every_gemma3_size_and_quant() -> None:
    catalog = load_catalog()
    assert set(catalog.models) == {"gemma-3-270m", "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b"}
    for name, model in catalog.models.items():
        assert {"qat", "q4_k_m", "q5_k_m", "q6_k", "q8_0"} <= set(model.quants), name
        assert set(model.quants) & {"f16", "bf16"}, name
        assert set(model.quants) <= set(catalog.quality_order), name
        for quant, source in model.quants.items():
            assert source.files[0].endswith(".gguf")
            # Vision models carry a projector for every quant, text-only ones never do.
            assert (source.mmproj is not None) == model.vision, (name, quant)
    assert catalog.models["gemma-3-27b"].quants["qat"].files == ["gemma-3-27b-it-qat-Q4_0.gguf"]
    assert catalog.models["gemma-3-27b"].quants["q4_k_m"].repo == "ggml-org/gemma-3-27b-it-GGUF"


def test_catalog_names_the_ungated_mirror_of_googles_repos() -> None:
    catalog = load_catalog()
    assert catalog.mirror_for("google/gemma-3-27b-it-qat-q4_0-gguf") == "gemma-3-27b:qat"
    assert catalog.mirror_for("Google/Gemma-3-4b-it-qat-q4_0-gguf") == "gemma-3-4b:qat"
    assert catalog.mirror_for("someone/else") is None


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("gemma-3-27b", CatalogRequest("gemma-3-27b", None)),
        ("gemma-3-27b:q4_k_m", CatalogRequest("gemma-3-27b", "q4_k_m")),
        ("Gemma-3-27B:Q4_K_M", CatalogRequest("gemma-3-27b", "q4_k_m")),
        ("gemma-3-4b:qat", CatalogRequest("gemma-3-4b", "qat")),
        ("gemma-3-4b:q4_0", CatalogRequest("gemma-3-4b", "qat")),
        ("hf.co/bartowski/google_gemma-3-27b-it-GGUF:Q6_K", HubRequest("bartowski/google_gemma-3-27b-it-GGUF", "Q6_K")),
        ("hf.co/org/repo", HubRequest("org/repo", None)),
        ("huggingface.co/org/repo:model.gguf", HubRequest("org/repo", "model.gguf")),
        ("https://huggingface.co/org/repo/resolve/main/x.gguf", HubRequest("org/repo", None)),
    ],
)
def test_parse_name(typed: str, expected: CatalogRequest | HubRequest) -> None:
    assert parse_name(typed) == expected


def test_request_names_are_canonical() -> None:
    assert CatalogRequest("gemma-3-4b", "qat").name == "gemma-3-4b:qat"
    assert HubRequest("org/repo", "Q4_K_M").name == "hf.co/org/repo:Q4_K_M"


@pytest.mark.parametrize("typed", ["llama-3", "gemma-3-27b:q2_k", "hf.co/not-a-repo", "hf.co/a/b/c d"])
def test_unknown_names_say_what_exists(typed: str) -> None:
    with pytest.raises(UnknownModelNameError) as err:
        parse_name(typed)
    message = str(err.value)
    assert typed in message
    assert "gemma-3-27b" in message


def test_unpublished_quant_lists_the_published_ones() -> None:
    with pytest.raises(UnknownModelNameError, match=r"Published quantizations: gemma-3-27b:f16, gemma-3-27b:q8_0"):
        parse_name("gemma-3-27b:iq2_xs")


# --- selecting files in a repo ---------------------------------------------------------------

_BARTOWSKI = [
    "README.md",
    "google_gemma-3-27b-it-Q4_K_M.gguf",
    "google_gemma-3-27b-it-Q6_K.gguf",
    "google_gemma-3-27b-it-Q6_K_L.gguf",
    "google_gemma-3-27b-it-UD-Q6_K_XL.gguf",
    "mmproj-google_gemma-3-27b-it-bf16.gguf",
    "mmproj-google_gemma-3-27b-it-f16.gguf",
    "mmproj-google_gemma-3-27b-it-f32.gguf",
    "BF16/gemma-3-27b-it-BF16-00002-of-00002.gguf",
    "BF16/gemma-3-27b-it-BF16-00001-of-00002.gguf",
    "Q8/gemma-3-27b-it-Q8_0-00001-of-00003.gguf",  # incomplete split set: not a model
]


def test_quant_tag_matches_whole_tokens_only() -> None:
    found = select.select_by_tag(_BARTOWSKI, "q6_k")
    assert [m.files for m in found] == [("google_gemma-3-27b-it-Q6_K.gguf",)]
    assert [m.first for m in select.select_by_tag(_BARTOWSKI, "Q6_K_L")] == ["google_gemma-3-27b-it-Q6_K_L.gguf"]


def test_split_models_are_one_model_in_part_order() -> None:
    (bf16,) = select.select_by_tag(_BARTOWSKI, "bf16")
    assert bf16.files == (
        "BF16/gemma-3-27b-it-BF16-00001-of-00002.gguf",
        "BF16/gemma-3-27b-it-BF16-00002-of-00002.gguf",
    )
    assert select.select_file(_BARTOWSKI, "gemma-3-27b-it-BF16-00002-of-00002.gguf") == bf16
    assert select.select_by_tag(_BARTOWSKI, "q8_0") == []


def test_projectors_are_never_models_and_f16_is_preferred() -> None:
    assert all(not m.first.startswith("mmproj") for m in select.group_models(_BARTOWSKI))
    assert select.find_mmproj(_BARTOWSKI) == "mmproj-google_gemma-3-27b-it-f16.gguf"
    assert select.find_mmproj(["a.gguf", "mmproj-model-f16-27B.gguf"]) == "mmproj-model-f16-27B.gguf"
    assert select.find_mmproj(["a.gguf", "README.md"]) is None


def test_default_model_is_the_only_one_else_q4_k_m() -> None:
    assert select.select_default(["x-Q8_0.gguf", "mmproj-f16.gguf"]).first == "x-Q8_0.gguf"
    assert select.select_default(_BARTOWSKI).first == "google_gemma-3-27b-it-Q4_K_M.gguf"
    assert select.select_default(["a-Q8_0.gguf", "a-Q6_K.gguf"]) is None


# --- the memory rule -------------------------------------------------------------------------


def test_required_memory_is_weights_plus_20_percent_plus_context_reserve() -> None:
    assert required_bytes(10 * GIB, 4) == 16 * GIB


def test_choose_quant_takes_the_best_that_fits_and_says_why() -> None:
    candidates = [("q8_0", 28 * GIB), ("q6_k", 22 * GIB), ("q4_k_m", 16 * GIB)]
    budget = MemoryBudget(30 * GIB, "available RAM")
    choice = choose_quant(candidates, context_reserve_gib=4, budget=budget, model="gemma-3-27b")
    assert choice.quant == "q4_k_m"  # 16 × 1.2 + 4 = 23.2 GiB ≤ 30; q6_k needs 30.4
    assert choice.required_bytes == int(16 * GIB * 1.2 + 4 * GIB)
    assert choice.reason == (
        "best quality that fits 30.0 GiB of available RAM (needs ≈23.2 GiB with room for context); "
        "q6_k would need ≈30.4 GiB"
    )


def test_choose_quant_refuses_when_nothing_fits() -> None:
    with pytest.raises(InsufficientMemoryError) as err:
        choose_quant(
            [("q8_0", 28 * GIB), ("qat", 15 * GIB)],
            context_reserve_gib=4,
            budget=MemoryBudget(8 * GIB, "available RAM"),
            model="gemma-3-27b",
        )
    assert err.value.smallest == "gemma-3-27b:qat"
    assert "`gemma-local pull gemma-3-27b:qat`" in str(err.value)
    assert isinstance(err.value, MemoryError)


def test_forced_quant_that_does_not_fit_warns() -> None:
    budget = MemoryBudget(16 * GIB, "available RAM")
    warning = check_fit("gemma-3-27b:q8_0", 28 * GIB, context_reserve_gib=4, budget=budget)
    assert warning is not None and warning.startswith("gemma-3-27b:q8_0 needs ≈37.6 GiB")
    assert check_fit("gemma-3-4b:qat", 3 * GIB, context_reserve_gib=2, budget=budget) is None


# --- GGUF metadata ---------------------------------------------------------------------------


def test_reads_model_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_model(4096))
    summary = read_gguf(path).summary()
    assert summary["architecture"] == "gemma3"
    assert summary["quantization"] == "Q4_K_M"
    assert summary["context_length"] == 32768
    assert summary["layers"] == 6
    assert summary["kv_heads"] == 1
    assert summary["sliding_window"] == 512
    assert summary["vocab_size"] == 300  # a long array: length kept, contents skipped
    assert summary["chat_template"] is True
    assert read_gguf(path).is_projector is False


def test_reads_projector_metadata(tmp_path: Path) -> None:
    path = tmp_path / "mmproj.gguf"
    path.write_bytes(gguf_mmproj(1024))
    info = read_gguf(path)
    assert info.is_projector
    assert info.summary()["projector_type"] == "gemma3"
    assert info.summary()["projection_dim"] == 640


def test_rejects_non_gguf_and_truncated_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"<html>not a model</html>")
    with pytest.raises(StoreError, match="not a GGUF"):
        read_gguf(junk)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(gguf_model(4096)[:200])
    with pytest.raises(StoreError, match=r"truncated|corrupt"):
        read_gguf(truncated)


def test_human_bytes() -> None:
    from gemma_local.hub.progress import human_bytes

    assert [human_bytes(n) for n in (512, 20_096, 857_739_168, 16_546_404_736)] == [
        "512 B",
        "20.1 kB",
        "857.7 MB",
        "16.5 GB",
    ]
