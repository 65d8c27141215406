"""Serving speed: gemma-local vs llama.cpp's own llama-server vs llama-cpp-python's server.

All three serve the same GGUF with the same threads on this machine, one after the other, and
answer the same OpenAI-style streamed chat requests (128 tokens, end-of-turn banned through
logit_bias so every answer has the same length):

- one stream: tokens/s of a single streamed answer (median of rounds);
- four streams: aggregate tokens/s of four concurrent streamed answers, and how many of the
  four were cut short.

    .venv/bin/python bench/concurrency.py [--tokens 128] [--rounds 3] [--skip-llama-cpp-python]

llama-server is built by bench/build_llama_server.sh from the llama.cpp source vendored in
the installed llama-cpp-python version (cached outside the repo).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import THREADS, machine, median, model_path, write_result

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a steam engine works, step by step.",
    "Describe a walk through a medieval market.",
    "Write a letter from a sailor to his family.",
]
BANNED = {"1": -100, "106": -100}  # <eos>, <end_of_turn>: every answer runs to max_tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(base)


def stream_once(base: str, prompt: str, n_tokens: int) -> dict:
    body = {
        "model": "gemma-3-27b",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": n_tokens,
        "temperature": 0,
        "logit_bias": BANNED,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    state: dict = {"first": 0.0, "last": 0.0, "chunks": 0, "usage": None, "finish": None}
    # A server that drops the stream (llama-cpp-python's does, under load) counts as cut short.
    with contextlib.suppress(httpx.HTTPError):
        _read_stream(base, body, state)
    first, last, chunks, usage_tokens, finish = (
        state["first"],
        state["last"],
        state["chunks"],
        state["usage"],
        state["finish"],
    )
    tokens = usage_tokens or chunks
    return {
        "tokens": tokens,
        "ttft": first - t0 if first else 0.0,
        "tok_s": (tokens - 1) / (last - first) if last > first else 0.0,
        "start": t0,
        "end": last or time.perf_counter(),
        "finish": finish,
    }


def _read_stream(base: str, body: dict, state: dict) -> None:
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                state["usage"] = data["usage"].get("completion_tokens")
            for choice in data.get("choices") or []:
                if choice.get("delta", {}).get("content"):
                    now = time.perf_counter()
                    state["first"] = state["first"] or now
                    state["last"] = now
                    state["chunks"] += 1
                state["finish"] = choice.get("finish_reason") or state["finish"]


def measure(base: str, n_tokens: int, rounds: int) -> dict:
    stream_once(base, "Hello", 8)  # warm-up
    single = [stream_once(base, PROMPTS[0], n_tokens)["tok_s"] for _ in range(rounds)]
    aggregates, cut = [], 0
    for _ in range(rounds):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda p: stream_once(base, p, n_tokens), PROMPTS))
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        aggregates.append(sum(r["tokens"] for r in results) / wall)
        cut += sum(1 for r in results if r["tokens"] < n_tokens)
    return {
        "one_stream_tok_s": round(median(single), 2),
        "four_streams_aggregate_tok_s": round(median(aggregates), 2),
        "streams_cut_short": cut,
        "streams_total": 4 * rounds,
    }


def run_server(name: str, cmd: list[str], port: int, n_tokens: int, rounds: int, env: dict | None = None) -> dict:
    print(f"--- {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        result = measure(base, n_tokens, rounds)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"    {result}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
    args = parser.parse_args()
    path = str(model_path())
    t = str(THREADS)
    results: dict[str, dict] = {}

    port = free_port()
    results["gemma_local"] = run_server(
        "gemma-local",
        [
            sys.executable,
            "-m",
            "gemma_local",
            "serve",
            "--model",
            path,
            "--port",
            str(port),
            "--parallel",
            "4",
            "--ctx",
            str(args.ctx),
            "--threads",
            t,
        ],
        port,
        args.tokens,
        args.rounds,
    )

    llama_server = (
        subprocess.run([str(HERE / "build_llama_server.sh")], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    results["llama_server"] = run_server(
        "llama-server",
        [
            llama_server,
            "-m",
            path,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--parallel",
            "4",
            "-c",
            str(4 * args.ctx),
            "-t",
            t,
            "-tb",
            t,
            "-fa",
            "on",
        ],
        port,
        args.tokens,
        args.rounds,
    )

    if not args.skip_llama_cpp_python:
        port = free_port()
        results["llama_cpp_python_server"] = run_server(
            "llama-cpp-python server",
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                path,
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--n_threads",
                t,
                "--n_threads_batch",
                t,
                "--n_ctx",
                str(args.ctx),
            ],
            port,
            args.tokens,
            args.rounds,
        )

    ours, anchor = results["gemma_local"], results["llama_server"]
    ratios = {
        "one_stream_vs_llama_server": round(ours["one_stream_tok_s"] / anchor["one_stream_tok_s"], 3),
        "four_streams_vs_llama_server": round(
            ours["four_streams_aggregate_tok_s"] / anchor["four_streams_aggregate_tok_s"], 3
        ),
    }
    if "llama_cpp_python_server" in results:
        lcp = results["llama_cpp_python_server"]
        ratios["one_stream_vs_llama_cpp_python"] = round(
            ours["one_stream_tok_s"] / max(lcp["one_stream_tok_s"], 1e-9), 2
        )
        ratios["four_streams_vs_llama_cpp_python"] = round(
            ours["four_streams_aggregate_tok_s"] / max(lcp["four_streams_aggregate_tok_s"], 1e-9), 2
        )
    write_result(
        "concurrency",
        {
            "bench": "concurrency",
            "machine": machine(),
            "model": Path(path).name,
            "tokens": args.tokens,
            "results": results,
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
