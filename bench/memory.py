"""Resident memory of a loaded engine at several contexts, KV types and SWA modes, beside the
planner's prediction. Each configuration loads in a fresh subprocess so RSS is its own.

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import machine, model_path, write_result

CONFIGS = [
    (ctx, kv, swa_full) for ctx in (4096, 8192, 16384, 32768) for kv in ("f16", "q8_0") for swa_full in (False, True)
]

CHILD = r"""
import json, sys, psutil
from gemma_local.engine import ContextParams, Engine, GenerationRequest, ChatMessage, SamplingParams
from gemma_local.memory import ModelShape, estimate
path, ctx, kv, swa_full = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
proc = psutil.Process()
base = proc.memory_info().rss
engine = Engine(path, ContextParams(n_ctx_per_seq=ctx, n_seq=1, kv_type=kv, swa_full=swa_full, n_threads=2))
# Touch the weights and KV once, as serving does.
engine.generate(GenerationRequest(messages=(ChatMessage.text("user", "hi"),), sampling=SamplingParams(temperature=0),
                                  max_tokens=4))
rss = proc.memory_info().rss - base
predicted = estimate(ModelShape.from_gguf(path), ctx=ctx, kv_type=kv, swa_full=swa_full)
alloc = engine.model.allocations
print(json.dumps({"rss": rss, "predicted": predicted.total, "predicted_kv": predicted.kv,
                  "llama_cpp_kv": alloc.kv, "llama_cpp_total": alloc.total}))
engine.close()
"""


def main() -> None:
    path = str(model_path())
    rows = []
    for ctx, kv, swa_full in CONFIGS:
        out = (
            subprocess.run(
                [sys.executable, "-c", CHILD, path, str(ctx), kv, "1" if swa_full else "0"],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        r = json.loads(out)
        rows.append(
            {
                "ctx": ctx,
                "kv_type": kv,
                "swa": "full" if swa_full else "iswa",
                "rss_mib": round(r["rss"] / 2**20, 1),
                "predicted_mib": round(r["predicted"] / 2**20, 1),
                "llama_cpp_allocated_mib": round(r["llama_cpp_total"] / 2**20, 1),
                "kv_mib": round(r["llama_cpp_kv"] / 2**20, 1),
                "predicted_kv_mib": round(r["predicted_kv"] / 2**20, 1),
            }
        )
        print(rows[-1], flush=True)
    write_result("memory", {"bench": "memory", "machine": machine(), "model": path, "rows": rows})


if __name__ == "__main__":
    main()
