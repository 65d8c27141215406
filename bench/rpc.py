"""The model split over two RPC workers on this machine vs the same model run locally.

On one machine this measures the RPC protocol's overhead (serialising graphs, copying
activations over loopback, one round trip per device per step), not the gain of a second
machine. Three engines are resident in this process and the rounds interleave them:

- ``local``: this process's CPU, weights not repacked, i.e. the same kernels the workers run;
- ``local-repacked``: the default local setup (weights repacked for this CPU), for context;
- ``rpc-2``: every layer on two ``gemma-local worker`` processes on 127.0.0.1 (split by free memory).

Speeds come from the engine's own timings (prompt: tokens / time to first token; decode:
the steps after it); bytes per token are
read from the kernel's TCP counters of this process's connections to the workers (TCP_INFO:
bytes acked + bytes received), so other loopback traffic on the machine does not count.

    .venv/bin/python bench/rpc.py --rounds 3 --tokens 64
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import PROMPT, THREADS, machine, median, model_path, write_result

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received, u64 at 120 and 128.
_TCP_INFO_LEN, _ACKED_AT, _RECEIVED_AT = 136, 120, 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gemma_local", "worker", "--port", str(port), "--threads", str(THREADS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"worker on port {port} did not start")


def wire_bytes(ports: set[int]) -> int:
    """Bytes sent (acked) plus received on this process's TCP connections to ``ports``."""
    total = 0
    for fd_name in os.listdir("/proc/self/fd"):
        fd = int(fd_name)
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if s.getpeername()[1] not in ports:
                continue
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            if len(info) >= _TCP_INFO_LEN:
                total += struct.unpack_from("<Q", info, _ACKED_AT)[0] + struct.unpack_from("<Q", info, _RECEIVED_AT)[0]
        except OSError:
            pass
        finally:
            s.close()
    return total


def run_once(engine, tokens: int) -> tuple[int, int, float, float]:
    """(prompt tokens, generated tokens, prompt tok/s, decode tok/s) of one greedy generation."""
    from gemma_local.engine import GenerationRequest, SamplingParams

    # End-of-generation tokens banned: every round generates exactly ``tokens``.
    sampling = SamplingParams(temperature=0, logit_bias={1: -100.0, 106: -100.0})
    result = engine.generate(GenerationRequest(prompt=PROMPT, sampling=sampling, max_tokens=tokens))
    n_prompt, n_gen = result.usage.prompt_tokens, result.usage.completion_tokens
    decode_tokens = max(n_gen - 1, 0)  # the first token is sampled at the end of the prompt phase
    # Prompt speed from the time to the first token: the RPC backend computes asynchronously,
    # so llama_decode returns before a split prompt is done and only reading the logits waits.
    ttft = result.timings.time_to_first_token_s
    return n_prompt, n_gen, n_prompt / ttft if ttft else 0.0, result.timings.generation_tokens_per_s(decode_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    from gemma_local.engine import ContextParams, Engine

    ports = [free_port(), free_port()]
    workers = [start_worker(p) for p in ports]
    path = model_path()
    base = {"n_ctx_per_seq": 2048, "n_seq": 1, "n_threads": THREADS}
    engines = {}
    try:
        engines["local"] = Engine(path, ContextParams(**base, gpu_layers=0, repack=False))
        engines["local-repacked"] = Engine(path, ContextParams(**base, gpu_layers=0))
        load_start, wire_start = time.perf_counter(), wire_bytes(set(ports))
        engines["rpc-2"] = Engine(
            path, ContextParams(**base, gpu_layers=-1, rpc_servers=tuple(f"127.0.0.1:{p}" for p in ports))
        )
        upload = {"bytes": wire_bytes(set(ports)) - wire_start, "s": time.perf_counter() - load_start}
        speeds: dict[str, dict[str, list[float]]] = {name: {"prompt": [], "decode": []} for name in engines}
        wire = {"prompt_bytes_per_token": [], "decode_bytes_per_token": []}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                before = wire_bytes(set(ports))
                n_prompt, n_gen, prompt_tps, decode_tps = run_once(engine, args.tokens)
                speeds[name]["prompt"].append(prompt_tps)
                speeds[name]["decode"].append(decode_tps)
                if name == "rpc-2":
                    full = wire_bytes(set(ports)) - before
                    before = wire_bytes(set(ports))
                    run_once(engine, 1)  # the prompt alone: what the decode steps add is the difference
                    prompt_only = wire_bytes(set(ports)) - before
                    wire["prompt_bytes_per_token"].append(prompt_only / n_prompt)
                    wire["decode_bytes_per_token"].append((full - prompt_only) / max(n_gen - 1, 1))
        result = {
            "machine": machine(),
            "load_average": os.getloadavg(),
            "rounds": args.rounds,
            "tokens": args.tokens,
            "prompt_tokens": n_prompt,
            "weights_upload": upload,
            "median": {name: {k: round(median(v), 2) for k, v in s.items()} for name, s in speeds.items()},
            "rpc_over_local": {
                k: round(median(speeds["rpc-2"][k]) / median(speeds["local"][k]), 3) for k in ("prompt", "decode")
            },
            "wire": {k: round(median(v)) for k, v in wire.items()},
        }
        write_result("rpc", result)
    finally:
        for engine in engines.values():
            engine.close()
        for w in workers:
            w.kill()
            w.wait(10)


if __name__ == "__main__":
    main()
