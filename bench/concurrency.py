"""Serving speed: gemma-local vs llama.cpp's own llama-server vs llama-cpp-python's server.

All serve the same GGUF with the same threads on this machine (llama-cpp-python's server also
once more with its own defaults), are started together and measured in alternating rounds,
and answer the same OpenAI-style streamed chat requests (128 tokens, end-of-turn banned
through logit_bias so every answer has the same length):

- one stream: tokens/s of a single streamed answer (median of rounds);
- four streams: aggregate tokens/s of four concurrent streamed answers, and how many of the
  four were cut short.

    .venv/bin/python bench/concurrency.py [--tokens 128] [--rounds 5] [--skip-llama-cpp-python]
        [--skip-llama-server] [--baseline-checkout DIR]

``--baseline-checkout DIR`` also serves gemma-local from another checkout of this repository
(e.g. ``git worktree add /tmp/prev HEAD~1``), so a change is measured against the code before
it in the same interleaved rounds (``*_vs_baseline_checkout`` ratios).

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


def one_round(base: str, n_tokens: int) -> tuple[float, float, int]:
    """(one-stream tok/s, four-stream aggregate tok/s, streams cut short) for one server."""
    single = stream_once(base, PROMPTS[0], n_tokens)["tok_s"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: stream_once(base, p, n_tokens), PROMPTS))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cut = sum(1 for r in results if r["tokens"] < n_tokens)
    return single, sum(r["tokens"] for r in results) / wall, cut


class Server:
    """A server process started for the whole run (idle between its rounds)."""

    def __init__(
        self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        print(f"--- {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        self.name = name
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
        self.single: list[float] = []
        self.aggregate: list[float] = []
        self.cut = 0

    def start(self) -> None:
        wait_ready(self.base, self.proc)
        stream_once(self.base, "Hello", 8)  # warm-up

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def summary(self) -> dict:
        return {
            "one_stream_tok_s": round(median(self.single), 2),
            "four_streams_aggregate_tok_s": round(median(self.aggregate), 2),
            "one_stream_rounds": [round(x, 2) for x in self.single],
            "four_streams_rounds": [round(x, 2) for x in self.aggregate],
            "streams_cut_short": self.cut,
            "streams_total": 4 * len(self.aggregate),
        }


def run_interleaved(servers: list[Server], n_tokens: int, rounds: int) -> None:
    """Every server answers round 1, then every server round 2, ...: a machine that speeds up
    or slows down during the run (this VM does, by ±15 %) affects them all alike."""
    for server in servers:
        server.start()
    for r in range(rounds):
        for server in servers:
            single, aggregate, cut = one_round(server.base, n_tokens)
            server.single.append(single)
            server.aggregate.append(aggregate)
            server.cut += cut
            print(f"    round {r + 1} {server.name}: {single:.1f} tok/s, 4 streams {aggregate:.1f}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument("--baseline-checkout", type=Path, help="also serve gemma-local from this checkout")
    args = parser.parse_args()
    path = str(model_path())
    t = str(THREADS)
    ours_port, anchor_port, lcp_port = free_port(), free_port(), free_port()

    def gemma_local(name: str, port: int, checkout: Path | None = None) -> Server:
        command = [sys.executable, "-m", "gemma_local", "serve", "--model", path, "--port", str(port)]
        command += ["--parallel", "4", "--ctx", str(args.ctx), "--threads", t]
        env = None if checkout is None else {**os.environ, "PYTHONPATH": str(checkout.resolve())}
        return Server(name, command, port, env=env, cwd=checkout)

    servers = [gemma_local("gemma_local", ours_port)]
    if args.baseline_checkout is not None:
        servers.append(gemma_local("baseline_checkout", free_port(), args.baseline_checkout))
    if not args.skip_llama_server:
        servers.append(llama_server_process(path, t, anchor_port, args.ctx))
    if not args.skip_llama_cpp_python:

        def llama_cpp_python(name: str, port: int, *options: str) -> Server:
            # This GGUF has no chat template: without --chat_format the server falls back to
            # llama-2's format and the 270M model ends every answer at once.
            command = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--port", str(port)]
            return Server(name, [*command, "--chat_format", "gemma", *options], port)

        servers.append(
            llama_cpp_python(
                "llama_cpp_python_server",
                lcp_port,
                *("--host", "127.0.0.1", "--n_threads", t, "--n_threads_batch", t, "--n_ctx", str(args.ctx)),
            )
        )
        # As a user runs it: its own defaults (threads = half the cores, here one).
        servers.append(llama_cpp_python("llama_cpp_python_server_defaults", free_port()))
    try:
        run_interleaved(servers, args.tokens, args.rounds)
    finally:
        for server in servers:
            server.stop()
    results = {server.name: server.summary() for server in servers}

    def ratio(a: Server, b: Server, attr: str) -> float:
        # Median of the per-round ratios: each compares two servers measured seconds apart.
        return round(median([x / max(y, 1e-9) for x, y in zip(getattr(a, attr), getattr(b, attr), strict=True)]), 3)

    ours = servers[0]
    ratios = {}
    for other in servers[1:]:
        ratios[f"one_stream_vs_{other.name}"] = ratio(ours, other, "single")
        ratios[f"four_streams_vs_{other.name}"] = ratio(ours, other, "aggregate")
    write_result(
        "concurrency",
        {
            "bench": "concurrency",
            "machine": machine(),
            "model": Path(path).name,
            "tokens": args.tokens,
            "rounds": args.rounds,
            "results": results,
            "ratios": ratios,
        },
    )


def llama_server_process(
    path: str, threads: str, port: int, ctx: int, *options: str, name: str = "llama_server"
) -> Server:
    """llama.cpp's own server, built from the llama.cpp that llama-cpp-python vendors.

    Its chat requests get the same Gemma prompt as ours: Jinja off and the built-in ``gemma``
    template (with Jinja on, a bare ``--chat-template gemma`` is read as a literal template).
    """
    binary = (
        subprocess.run([str(HERE / "build_llama_server.sh")], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    command = [binary, "-m", path, "--port", str(port), "--host", "127.0.0.1", "--parallel", "4", "-c", str(4 * ctx)]
    command += ["--no-jinja", "--chat-template", "gemma", "-t", threads, "-tb", threads, "-fa", "on", *options]
    return Server(name, command, port)


if __name__ == "__main__":
    main()
