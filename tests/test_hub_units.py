"""Pure parts of the hub: catalog and names, file selection, the memory rule, the GGUF reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_fake import gguf_mmproj, gguf_model

from gemma_local.errors import InsufficientMemoryError, StoreError, UnknownModelNameError
from gemma_local.hub import select
from gemma_local.hub.catalog import CatalogRequest, HubRequest, load_catalog, parse_name
from gemma_local.hub.fit import candidate, check_fit, choose_quant
from gemma_local.hub.gguf_meta import read_gguf
from gemma_local.memory import GIB, GpuMemory, MachineMemory, minimum_plan, plan

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


# --- the memory rule: pull asks the planner serve uses --------------------------------------

_27B = load_catalog().models["gemma-3-27b"].shape("gemma-3-27b", 0)


def _27b(quant: str, weights_gib: float, projector_gib: float = 0):
    return candidate(quant, _27B, int(weights_gib * GIB), int(projector_gib * GIB))


def test_choose_quant_takes_the_best_the_planner_fits_and_says_why() -> None:
    machine = MachineMemory.assume(30 * GIB, "available RAM")  # a plan may use 25.5 GiB
    choice = choose_quant([_27b("q8_0", 28), _27b("q6_k", 22), _27b("q4_k_m", 16)], machine=machine, model="27b")
    assert choice.quant == "q6_k"  # 22 GiB of weights + 1.2 GiB KV for 8192 tokens + checkpoints + buffers
    assert choice.required_bytes == minimum_plan(_27b("q6_k", 22).shape, machine).estimate.total
    assert choice.reason == (
        "best quality that fits 85% of 30.0 GiB of available RAM (needs ≈25.4 GiB for 1 slot of 8192 tokens); "
        "q8_0 would need ≈28.8 GiB for 1 slot of 8192 tokens"
    )


def test_choose_quant_counts_the_vision_projector() -> None:
    machine = MachineMemory.assume(28 * GIB, "available RAM")  # 23.8 GiB for a plan
    assert choose_quant([_27b("q6_k", 22)], machine=machine, model="27b").quant == "q6_k"
    with pytest.raises(InsufficientMemoryError):
        choose_quant([_27b("q6_k", 22, projector_gib=1)], machine=machine, model="27b")


def test_choose_quant_refuses_when_nothing_fits() -> None:
    with pytest.raises(InsufficientMemoryError) as err:
        choose_quant(
            [_27b("q8_0", 28), _27b("qat", 15)],
            machine=MachineMemory.assume(8 * GIB, "available RAM"),
            model="gemma-3-27b",
        )
    assert err.value.smallest == "gemma-3-27b:qat"
    assert err.value.available == int(8 * GIB * 0.85)
    assert "`gemma-local pull gemma-3-27b:qat`" in str(err.value)
    assert isinstance(err.value, MemoryError)


def test_forced_quant_that_does_not_fit_warns() -> None:
    machine = MachineMemory.assume(16 * GIB, "available RAM")
    warning = check_fit("gemma-3-27b:q8_0", _27b("q8_0", 28), machine=machine)
    assert warning is not None and warning.startswith("gemma-3-27b:q8_0 needs ≈28.8 GiB for 1 slot of 8192 tokens")
    small = load_catalog().models["gemma-3-4b"].shape("gemma-3-4b", 0)
    assert check_fit("gemma-3-4b:qat", candidate("qat", small, 3 * GIB), machine=machine) is None


TWO_GPUS = MachineMemory(
    total_ram=32 * GIB,
    available_ram=8 * GIB,
    gpu_backend=True,
    gpus=(GpuMemory(12 * GIB, 12 * GIB), GpuMemory(12 * GIB, 12 * GIB)),
)
METAL = MachineMemory(total_ram=32 * GIB, available_ram=31 * GIB, gpu_backend=True, unified=True)


@pytest.mark.parametrize("machine", [TWO_GPUS, METAL], ids=["two-gpus", "metal"])
def test_pull_chooses_what_the_planner_can_serve(machine: MachineMemory) -> None:
    """The quant pull picks is one serve's planner fits on the same machine; the better one is not.

    Two 12 GiB GPUs count as 24 GiB (llama.cpp splits layers over both); Metal may wire only
    75% of RAM however much is free. The old rule (hub/fit.py) and the old planner disagreed on both.
    """
    candidates = [_27b("q8_0", 28), _27b("q6_k", 22), _27b("q5_k_m", 18), _27b("qat", 15)]
    choice = choose_quant(candidates, machine=machine, model="gemma-3-27b")
    chosen = next(c for c in candidates if c.quant == choice.quant)
    assert plan(chosen.shape, machine).fits  # what `serve` runs, with every default
    assert plan(chosen.shape, machine, parallel=1).ctx >= 8192  # `serve --parallel 1`
    assert choice.required_bytes == minimum_plan(chosen.shape, machine).estimate.total <= machine.budget
    better = candidates[candidates.index(chosen) - 1]
    assert not minimum_plan(better.shape, machine).fits
    # Both GPUs: 6.8 + 21.6 GiB (the first GPU alone would leave room for qat only). Metal: 85% of
    # its 24 GiB working set (85% of the 31 GiB free would have taken q6_k, which Metal cannot wire).
    expected = {"two-gpus": ("q6_k", 28.4), "metal": ("q5_k_m", 20.4)}
    assert (choice.quant, round(machine.budget / GIB, 1)) == expected["two-gpus" if machine is TWO_GPUS else "metal"]


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
