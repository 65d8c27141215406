"""Run every benchmark in turn (what `make bench` does). Results land in bench/results/*.json;
bench/README.md records them with the commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["engine_vs_llama.py"],
    ["prefix_cache.py"],
    ["memory.py"],
    ["concurrency.py"],
    ["grammar_overhead.py"],
    ["vision.py"],
    ["soak.py"],
    ["search_index.py"],
    ["cold_model.py"],
]


def main() -> int:
    failed = []
    for bench in BENCHES:
        script = HERE / bench[0]
        if not script.exists():
            continue
        print(f"=== {' '.join(bench)}", flush=True)
        if subprocess.run([sys.executable, str(script), *bench[1:]], cwd=HERE).returncode != 0:
            failed.append(bench[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
