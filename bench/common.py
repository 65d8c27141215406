"""Shared bits of the benchmarks: the model, the prompt, timing helpers, result output."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

import psutil

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
PROMPT = (
    "<start_of_turn>user\nWrite a detailed essay about the history of the printing press, "
    "its inventors, and its effect on European society.<end_of_turn>\n<start_of_turn>model\n"
)


def model_path() -> Path:
    from gemma_local.hub.embedded import embedded_model_path

    return Path(os.environ.get("BENCH_MODEL") or embedded_model_path())


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "threads": THREADS,
    }


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def write_result(name: str, result: dict) -> None:
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
