"""The memory planner against what llama.cpp actually allocates for the real 270M model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gemma_local.engine.model import ContextParams, LlamaModel
from gemma_local.hub.catalog import load_catalog
from gemma_local.memory import GIB, GpuMemory, MachineMemory, ModelShape, estimate, plan

_27B = load_catalog().models["gemma-3-27b"]
GEMMA3_27B = _27B.shape("Gemma 3 27B (QAT Q4_0)", _27B.quants["qat"].approx_bytes)
_270M = load_catalog().models["gemma-3-270m"]
_270M_SHAPE = _270M.shape("Gemma 3 270M", 253 * 2**20)


def test_shape_read_from_the_gguf_header(model_path: Path) -> None:
    shape = ModelShape.from_gguf(model_path)
    assert (shape.n_layer, shape.n_embd, shape.n_head, shape.n_head_kv, shape.head_dim_k) == (18, 640, 4, 1, 256)
    assert (shape.n_swa, shape.n_ctx_train, shape.n_vocab) == (512, 32768, 262144)
    assert (shape.n_global_layers, shape.n_swa_layers) == (3, 15)


def test_the_catalog_shape_pull_plans_with_is_the_gguf_header_serve_plans_with(model_path: Path) -> None:
    """``pull`` plans from the catalog before the download, ``serve`` from the file after it."""
    from dataclasses import replace as with_

    header = ModelShape.from_gguf(model_path)
    catalog = load_catalog().models["gemma-3-270m"].shape(header.name, header.weights_bytes)
    assert with_(catalog, file_type=header.file_type) == header


@pytest.mark.parametrize(
    ("ctx", "parallel", "kv_type", "swa_full"),
    [
        (1024, 1, "f16", False),
        (4096, 1, "f16", False),
        (16384, 1, "f16", False),
        (4096, 1, "f16", True),
        (16384, 1, "f16", True),
        (4096, 3, "f16", False),
        (2048, 4, "f16", False),
        (2048, 4, "f16", True),
        (8192, 1, "q8_0", False),
    ],
)
def test_estimate_matches_llama_cpp_allocation(model_path: Path, ctx: int, parallel: int, kv_type: str, swa_full: bool):
    shape = ModelShape.from_gguf(model_path)
    predicted = estimate(shape, ctx=ctx, parallel=parallel, kv_type=kv_type, swa_full=swa_full, flash_attn=True)
    model = LlamaModel(
        model_path,
        ContextParams(
            n_ctx_per_seq=ctx, n_seq=parallel, kv_type=kv_type, swa_full=swa_full, flash_attn="on", n_threads=1
        ),
    )
    try:
        actual = model.allocations
    finally:
        model.close()
    assert actual.kv > 0 and actual.compute > 0
    assert predicted.kv == pytest.approx(actual.kv, rel=0.02)
    assert predicted.compute == pytest.approx(actual.compute, rel=0.15)
    assert predicted.total == pytest.approx(actual.total, rel=0.10)


def test_interleaved_swa_is_what_makes_128k_fit_for_27b() -> None:
    iswa = estimate(GEMMA3_27B, ctx=131072, kv_type="f16")
    full = estimate(GEMMA3_27B, ctx=131072, kv_type="f16", swa_full=True)
    assert full.kv / GIB == pytest.approx(62.0, rel=0.01)  # gemma3.md: 62 GiB with every layer full
    assert iswa.kv / GIB == pytest.approx(10.6, rel=0.02)  # and ≈ 10.6 GiB with iSWA
    q8 = estimate(GEMMA3_27B, ctx=131072, kv_type="q8_0")
    assert q8.kv == pytest.approx(iswa.kv * 17 / 32, rel=0.01)


def test_plan_shrinks_to_fit_and_says_why() -> None:
    small_laptop = MachineMemory(total_ram=24 * GIB, available_ram=20 * GIB, gpu_backend=False)
    p = plan(GEMMA3_27B, small_laptop)
    assert p.fits and p.estimate.total <= p.budget
    roomy = plan(GEMMA3_27B, MachineMemory(total_ram=128 * GIB, available_ram=120 * GIB, gpu_backend=False))
    assert (roomy.parallel, roomy.ctx) == (4, 32768)
    assert (p.parallel, p.ctx) < (roomy.parallel, roomy.ctx)
    too_small = plan(GEMMA3_27B, MachineMemory(total_ram=8 * GIB, available_ram=6 * GIB, gpu_backend=False))
    assert not too_small.fits and "smaller quantization" in too_small.reasons[0]


def test_plan_keeps_what_the_user_fixed() -> None:
    machine = MachineMemory(total_ram=64 * GIB, available_ram=60 * GIB, gpu_backend=False)
    p = plan(GEMMA3_27B, machine, ctx=131072, parallel=1, kv_type="q8_0")
    assert (p.ctx, p.parallel, p.kv_type) == (131072, 1, "q8_0")


def test_gpu_layers_follow_free_vram() -> None:
    gpu = MachineMemory(
        total_ram=64 * GIB, available_ram=60 * GIB, gpu_backend=True, gpus=(GpuMemory(24 * GIB, 12 * GIB),)
    )
    p = plan(GEMMA3_27B, gpu)
    assert 0 < p.gpu_layers < GEMMA3_27B.n_layer + 1
    big = MachineMemory(
        total_ram=64 * GIB, available_ram=60 * GIB, gpu_backend=True, gpus=(GpuMemory(80 * GIB, 80 * GIB),)
    )
    assert plan(GEMMA3_27B, big).gpu_layers == GEMMA3_27B.n_layer + 1


def test_two_gpus_hold_what_one_gpu_of_their_sum_holds() -> None:
    """llama.cpp splits layers over every GPU: two 12 GiB cards offload like one 24 GiB card."""
    one = MachineMemory(
        total_ram=64 * GIB, available_ram=60 * GIB, gpu_backend=True, gpus=(GpuMemory(24 * GIB, 24 * GIB),)
    )
    two = MachineMemory(
        total_ram=64 * GIB,
        available_ram=60 * GIB,
        gpu_backend=True,
        gpus=(GpuMemory(12 * GIB, 12 * GIB), GpuMemory(12 * GIB, 12 * GIB)),
    )
    assert two.vram_free == one.vram_free == 24 * GIB and two.budget == one.budget
    a, b = plan(GEMMA3_27B, one), plan(GEMMA3_27B, two)
    assert (a.ctx, a.parallel, a.kv_type, a.gpu_layers, a.estimate) == (
        b.ctx,
        b.parallel,
        b.kv_type,
        b.gpu_layers,
        b.estimate,
    )
    assert b.gpu_layers > plan(GEMMA3_27B, replace(two, gpus=two.gpus[:1])).gpu_layers


def test_metal_plans_within_its_working_set() -> None:
    """On Apple silicon Metal wires at most ~75% of RAM, however much is free."""
    mac = MachineMemory(total_ram=32 * GIB, available_ram=30 * GIB, gpu_backend=True, unified=True)
    assert mac.usable_ram == 24 * GIB and mac.budget == int(24 * GIB * 0.85)
    p = plan(GEMMA3_27B, mac)
    assert p.fits and p.estimate.total <= 24 * GIB * 0.85
    assert p.gpu_layers == GEMMA3_27B.n_layer + 1  # unified memory: every layer on the GPU
    cpu_build = replace(mac, gpu_backend=False)  # no Metal, no cap
    assert cpu_build.usable_ram == 30 * GIB


def test_the_vision_projector_is_counted() -> None:
    machine = MachineMemory(total_ram=64 * GIB, available_ram=60 * GIB)
    # Checkpoints fixed: left to the planner, their count follows the memory left over.
    without = plan(GEMMA3_27B, machine, ctx=8192, parallel=1, checkpoints=8)
    with_projector = plan(GEMMA3_27B, machine, ctx=8192, parallel=1, projector_bytes=GIB, checkpoints=8)
    assert with_projector.estimate.total == without.estimate.total + GIB


def test_detect_reads_every_gpu_nvidia_smi_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in nvidia-smi (no GPU here): every line is a GPU, and their memory adds up."""
    from gemma_local.memory import machine as machine_module

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '81559, 80000\\n24564, 20000\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(machine_module, "_gpu_offload_supported", lambda: True)
    monkeypatch.setattr(machine_module.platform, "system", lambda: "Linux")
    detected = MachineMemory.detect()
    assert detected.gpus == (GpuMemory(81559 * 2**20, 80000 * 2**20), GpuMemory(24564 * 2**20, 20000 * 2**20))
    assert detected.vram_free == 100000 * 2**20 and detected.vram_budget == int(100000 * 2**20 * 0.9)
    monkeypatch.setattr(machine_module, "_gpu_offload_supported", lambda: False)  # a CPU build: GPUs unused
    assert MachineMemory.detect().gpus == ()


def test_draft_rows_of_logits_are_counted(model_path: Path) -> None:
    """Speculative decoding asks llama.cpp for 1 + draft_max rows of logits per slot."""
    shape = ModelShape.from_gguf(model_path)
    predicted = estimate(shape, ctx=2048, parallel=4, draft_max=8)
    model = LlamaModel(model_path, ContextParams(n_ctx_per_seq=2048, n_seq=4, n_threads=1, n_outputs_per_seq=9))
    try:
        actual = model.allocations
    finally:
        model.close()
    assert predicted.compute == pytest.approx(actual.compute, rel=0.15)
    assert predicted.compute > estimate(shape, ctx=2048, parallel=4).compute


def test_checkpoints_are_planned_to_fit_and_counted() -> None:
    big_machine = MachineMemory(total_ram=128 * GIB, available_ram=120 * GIB, gpu_backend=False)
    roomy = plan(GEMMA3_27B, big_machine)
    e = roomy.estimate
    # One checkpoint of the 27B: the 1024-token window on its 52 sliding-window layers (f16).
    assert e.checkpoint_bytes == 1024 * 52 * 16 * (128 + 128) * 2
    # At least the default 8, more while they take at most a quarter of what is left.
    assert 8 <= e.checkpoints <= 32 and e.checkpoints_total == e.checkpoints * 4 * e.checkpoint_bytes
    left = roomy.budget - (e.total - e.checkpoints_total)
    assert e.checkpoints_total <= left / 4 < (e.checkpoints + 1) * 4 * e.checkpoint_bytes
    assert any("checkpoints per slot" in r for r in roomy.reasons)
    # A small model's checkpoints are cheap: as many as the cap.
    small = plan(_270M_SHAPE, big_machine)
    assert small.estimate.checkpoints == 32
    tight = plan(GEMMA3_27B, MachineMemory(total_ram=24 * GIB, available_ram=20 * GIB, gpu_backend=False))
    assert tight.estimate.checkpoints < 8 and tight.estimate.total <= tight.budget
    fixed = plan(GEMMA3_27B, big_machine, checkpoints=2)
    assert fixed.estimate.checkpoints == 2
    full = estimate(GEMMA3_27B, ctx=4096, swa_full=True, checkpoints=8)
    assert full.checkpoints_total == 0  # a full-size cache cuts back exactly without them
