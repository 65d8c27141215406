"""The memory planner against what llama.cpp actually allocates for the real 270M model."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma_local.engine.model import ContextParams, LlamaModel
from gemma_local.engine.planner import (
    GEMMA3_27B,
    GIB,
    MachineMemory,
    ModelShape,
    estimate,
    plan,
)


def test_shape_read_from_the_gguf_header(model_path: Path) -> None:
    shape = ModelShape.from_gguf(model_path)
    assert (shape.n_layer, shape.n_embd, shape.n_head, shape.n_head_kv, shape.head_dim_k) == (18, 640, 4, 1, 256)
    assert (shape.n_swa, shape.n_ctx_train, shape.n_vocab) == (512, 32768, 262144)
    assert (shape.n_global_layers, shape.n_swa_layers) == (3, 15)


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
        total_ram=64 * GIB, available_ram=60 * GIB, gpu_backend=True, vram_total=24 * GIB, vram_free=12 * GIB
    )
    p = plan(GEMMA3_27B, gpu)
    assert 0 < p.gpu_layers < GEMMA3_27B.n_layer + 1
    big = MachineMemory(
        total_ram=64 * GIB, available_ram=60 * GIB, gpu_backend=True, vram_total=80 * GIB, vram_free=80 * GIB
    )
    assert plan(GEMMA3_27B, big).gpu_layers == GEMMA3_27B.n_layer + 1
